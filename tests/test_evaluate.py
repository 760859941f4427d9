import pytest
import torch
import torch.nn.functional as F
from conftest import CPU

from beluga.evaluate import averaged_logits
from beluga.model import ResNet9


@pytest.mark.parametrize("tta", ["none", "flip", "flip_shift", "flip_shift_equal"])
def test_all_views_in_one_pass_average_the_logits_of_each_view(tta):
    torch.manual_seed(0)
    model = ResNet9().eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        got = averaged_logits(model, x, tta, CPU.memory_format)

        def mirrored(v):  # the image and its mirror image, each through its own pass
            return (model(v) + model(v.flip(3))) / 2

        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (mirrored(padded[..., :-2, :-2]) + mirrored(padded[..., 2:, 2:])) / 2
        expected = {
            "none": model(x),
            "flip": mirrored(x),
            "flip_shift": (mirrored(x) + shifted) / 2,
            "flip_shift_equal": (mirrored(x) + 2 * shifted) / 3,
        }
    torch.testing.assert_close(got, expected[tta])
    assert got.dtype == torch.float32 and got.shape == (5, 10)


def test_every_tta_name_is_one_the_params_and_predict_accept():
    from typing import get_args

    from beluga.evaluate import TTA
    from beluga.params import EvaluateParams
    from beluga.predict import TTA_NAMES

    accepted = get_args(EvaluateParams.model_fields["tta"].annotation)
    assert set(TTA) == set(accepted) == set(TTA_NAMES)
