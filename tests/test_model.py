import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchinfo
from conftest import DEFAULTS
from torch import nn

import beluga.model
from beluga.batch_norm import BatchNorm
from beluga.loader import MEAN, STD
from beluga.model import CELU, ResNet9, build_model, celu_from_exp, load_model, save_model
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


# which images of a batch of 8 form each of 2 sub-batches: NCHW interleaves, channels_last chunks
SUB_BATCHES = {torch.contiguous_format: [[0, 2, 4, 6], [1, 3, 5, 7]],
               torch.channels_last: [[0, 1, 2, 3], [4, 5, 6, 7]]}  # fmt: skip


@pytest.mark.parametrize("layout", SUB_BATCHES)
def test_ghost_batch_norm_normalises_each_sub_batch_alone_in_both_layouts(layout):
    torch.manual_seed(0)
    norm = BatchNorm(3, ghost_splits=2, bias_lr_factor=4.0).train()
    with torch.no_grad():  # a scale and bias of each channel's own, to catch a channel mix-up
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.bias.copy_(torch.tensor([0.25, -0.5, 1.0]))
    x = (torch.randn(8, 3, 4, 4) * 3 + 1).contiguous(memory_format=layout).requires_grad_()
    upstream = torch.randn(8, 3, 4, 4)
    y = norm(x)
    (y * upstream).sum().backward()
    assert y.is_contiguous(memory_format=layout)
    # the reference: each sub-batch through a batch norm of its own
    ref_x = x.detach().clone().requires_grad_()
    ref_weight = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    ref_bias = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    ref_y = torch.zeros(8, 3, 4, 4)
    for images in map(torch.tensor, SUB_BATCHES[layout]):
        part = F.batch_norm(ref_x[images], None, None, ref_weight, ref_bias, training=True)
        ref_y = ref_y.index_copy(0, images, part)
    (ref_y * upstream).sum().backward()
    torch.testing.assert_close(y, ref_y)
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(norm.weight.grad, ref_weight.grad)
    torch.testing.assert_close(norm.bias.grad, ref_bias.grad * 2)  # stored bias = effective / 2
    # running statistics: one row per sub-batch, averaged on the switch to eval
    parts = [x.detach()[images] for images in SUB_BATCHES[layout]]
    means = torch.stack([part.mean((0, 2, 3)) for part in parts])
    variances = torch.stack([part.var((0, 2, 3)) for part in parts])
    torch.testing.assert_close(norm.split_mean, 0.1 * means)
    torch.testing.assert_close(norm.split_var, 0.9 + 0.1 * variances)
    norm.eval()
    torch.testing.assert_close(norm.running_mean, 0.1 * means.mean(0))
    odd = torch.randn(7, 3, 4, 4)
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(norm.state_dict(), strict=False)
    with torch.no_grad():
        plain.bias.mul_(2)
    torch.testing.assert_close(norm(odd), plain(odd))


def test_ghost_batch_norm_keeps_the_average_of_a_whole_batch_update_and_loads_old_files():
    torch.manual_seed(0)
    norm, whole = BatchNorm(3, ghost_splits=2).train(), nn.BatchNorm2d(3).train()
    for batch in (torch.randn(8, 3, 4, 4), torch.randn(7, 3, 4, 4) + 2, torch.randn(6, 3, 4, 4)):
        parts = [batch[0::2], batch[1::2]] if len(batch) % 2 == 0 else [batch]  # NCHW
        y = norm(batch)
        if len(parts) == 1:  # a batch it does not divide is normalised whole
            torch.testing.assert_close(y, F.batch_norm(batch, None, None, training=True))
        with torch.no_grad():  # today's running statistics: the sub-batches' updates averaged
            stats = [torch.stack([p.mean((0, 2, 3)) for p in parts]).mean(0),
                     torch.stack([p.var((0, 2, 3)) for p in parts]).mean(0)]  # fmt: skip
            whole.running_mean.mul_(0.9).add_(0.1 * stats[0])
            whole.running_var.mul_(0.9).add_(0.1 * stats[1])
    state = norm.state_dict()
    torch.testing.assert_close(state["running_mean"], whole.running_mean)
    torch.testing.assert_close(state["running_var"], whole.running_var)
    # a model file from before the per-split rows: every row starts at the running statistics
    old = {k: v for k, v in state.items() if not k.startswith("split_")}
    again = BatchNorm(3, ghost_splits=2)
    again.load_state_dict(old)
    assert torch.equal(again.split_mean, state["running_mean"].repeat(2, 1))
    odd = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(again.eval()(odd), norm.eval()(odd))


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


def test_celu_from_exp_equals_torchs_celu_in_value_and_gradient():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: celu_from_exp(t, 0.3), (x,))
    torch.testing.assert_close(celu_from_exp(x, 0.3), nn.functional.celu(x, 0.3))
    half = (x.detach() * 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = celu_from_exp(half, 0.3)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        out.float(), nn.functional.celu(half.float(), 0.3), atol=4e-3, rtol=1e-2
    )


def test_celu_from_exp_gradient_in_bf16_has_no_bias_where_the_output_form_has():
    x = torch.linspace(-3, -1, 4096).to(torch.bfloat16).requires_grad_()
    celu_from_exp(x, 0.3).sum().backward()
    exact = torch.exp(x.detach().double() / 0.3)
    from_output = torch.ops.aten.elu_backward(
        torch.ones_like(x), 0.3, 1, 1 / 0.3, True, nn.functional.celu(x.detach(), 0.3)
    )
    assert abs((x.grad.double() - exact).mean() / exact.mean()) < 0.01
    assert (from_output.double() - exact).mean() / exact.mean() < -0.1


@pytest.mark.parametrize(
    ("amd", "dtype", "exp_form"),
    [(True, torch.bfloat16, True), (True, torch.float32, False), (False, torch.bfloat16, False)],
)
def test_celu_takes_the_exp_form_on_amd_cpus_in_bf16_only(monkeypatch, amd, dtype, exp_form):
    monkeypatch.setattr(beluga.model, "AMD_CPU", amd)
    x = (torch.randn(8, 16, 4, 4) * 4).to(dtype)
    expected = celu_from_exp(x, 0.3) if exp_form else nn.functional.celu(x, 0.3)
    assert torch.equal(CELU(0.3)(x), expected)
    assert not torch.equal(celu_from_exp(x, 0.3), nn.functional.celu(x, 0.3))
