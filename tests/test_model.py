import numpy as np
import torch
import torchinfo
from conftest import DEFAULTS
from torch import nn

from beluga.batch_norm import BatchNorm
from beluga.loader import MEAN, STD
from beluga.model import ResNet9, build_model, load_model, save_model
from beluga.receptive_field import layer_table


def test_parameter_count_matches_the_reference_table():
    model = ResNet9()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6_573_130


def test_each_block_has_the_reference_output_shape():
    model = ResNet9().eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for block in (model.prep, model.layer1, model.layer2, model.layer3, model.head):
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (10,)]


def test_logit_scale_multiplies_the_output_without_adding_parameters():
    torch.manual_seed(0)
    plain = ResNet9().eval()
    scaled = ResNet9(logit_scale=0.125).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(scaled(x), plain(x) * 0.125)
    assert sum(p.numel() for p in scaled.parameters()) == 6_573_130


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_whiten_stem_keeps_the_learnt_weights_and_freezes_filters_from_the_data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    params = DEFAULTS.model.model_copy(
        update={"stem": "whiten", "activation": "celu", "freeze_bn_scale": False}
    )
    model = build_model(params, 10, images)
    assert _trainable(model) == 6_573_130
    filters = model.prep[0].weight
    assert not filters.requires_grad and filters.shape == (27, 3, 3, 3)
    # whitened patches are decorrelated, with about unit variance (less the eps's share)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = torch.nn.functional.conv2d(x, filters)
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(27, -1))
    variances = cov.diagonal()
    assert (cov - torch.diag(variances)).abs().max() < 0.05
    assert ((variances > 0.5) & (variances < 1.05)).all()

    save_model(tmp_path / "m.pt", model, tuple("abcdefghij"))
    again, _ = load_model(tmp_path / "m.pt")
    assert again.config == model.config and torch.equal(again.prep[0].weight, filters)
    batch = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(batch), again.eval()(batch))


def test_frozen_bn_scale_leaves_only_the_bn_scales_untrained():
    frozen = ResNet9(freeze_bn_scale=True)
    bn_scales = sum(
        m.weight.numel() for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert _trainable(frozen) == 6_573_130 - bn_scales


def _layers(model: nn.Module):
    return layer_table(model, torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0))


def test_receptive_field_is_computed_from_kernels_strides_and_dilations():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.AdaptiveAvgPool2d(1),
    )  # fmt: skip
    table = _layers(model)
    # the global pool is an 8-wide kernel over outputs 4 input pixels apart
    assert table.receptive_field.tolist() == [3, 3, 5, 7, 7 + 2 * 2 * 4, 23 + 7 * 4]
    assert table.jump.tolist() == [1, 1, 2, 4, 4, 32]
    assert table.output_shape.tolist()[-1] == "4x1x1"


def test_resnet9_receptive_field_covers_the_image_from_layer3_on():
    table = _layers(ResNet9()).set_index("layer")
    assert table.parameters.sum() == 6_573_130
    assert table.receptive_field["layer2.0"] == 18
    assert table.receptive_field["layer3.0.1"] == 32 and table.jump["layer3.0.1"] == 8
    assert table.receptive_field["head.0"] == 88 and table.output_shape["head.0"] == "512x1x1"


def test_ghost_batch_norm_normalises_each_interleaved_sub_batch_and_averages_their_statistics():
    torch.manual_seed(0)
    norm = BatchNorm(3, ghost_splits=2).train()
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    y = norm(x)
    for part in (0, 1):
        alone = torch.nn.functional.batch_norm(x[part::2], None, None, training=True)
        assert torch.allclose(y[part::2], alone, atol=1e-5)
    means = torch.stack([x[part::2].mean((0, 2, 3)) for part in (0, 1)]).mean(0)
    assert torch.allclose(norm.running_mean, 0.1 * means, atol=1e-6)
    # a batch that does not split evenly is normalised whole; testing uses the running stats
    odd = torch.randn(7, 3, 4, 4)
    whole = torch.nn.functional.batch_norm(odd, None, None, training=True)
    assert torch.allclose(norm(odd), whole, atol=1e-5)
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(norm.state_dict())
    assert torch.allclose(norm.eval()(odd), plain(odd), atol=1e-6)


def test_bias_lr_factor_trains_the_bias_like_sgd_at_that_factor_and_weight_decay_divided():
    torch.manual_seed(0)
    x, target = torch.randn(16, 4, 3, 3), torch.randn(16, 4, 3, 3)
    fast = BatchNorm(4, bias_lr_factor=64.0)
    plain = nn.BatchNorm2d(4)
    sgd = {"lr": 0.01, "momentum": 0.9, "nesterov": True}
    opt_fast = torch.optim.SGD(fast.parameters(), weight_decay=5e-4, **sgd)
    groups = [{"params": [plain.weight]},
              {"params": [plain.bias], "lr": 0.64, "weight_decay": 5e-4 / 64}]  # fmt: skip
    opt_plain = torch.optim.SGD(groups, weight_decay=5e-4, **sgd)
    with torch.no_grad():
        fast.bias.fill_(0.3 / 8)
        plain.bias.fill_(0.3)
    for _ in range(5):
        for norm, opt in ((fast, opt_fast), (plain, opt_plain)):
            opt.zero_grad()
            ((norm(x) - target) ** 2).mean().backward()
            opt.step()
    assert torch.allclose(fast.bias * 8, plain.bias, atol=1e-5)
    assert not torch.allclose(plain.bias, torch.full((4,), 0.3), atol=1e-3)
    assert torch.allclose(fast.weight, plain.weight, atol=1e-5)
