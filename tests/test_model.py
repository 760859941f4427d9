import torch

from beluga.model import ResNet9


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
