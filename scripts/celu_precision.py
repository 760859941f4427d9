"""CELU's value and derivative in bf16 against float64: torch's kernel and the exp forms.

    python scripts/celu_precision.py

Over a million inputs drawn as N(-0.3, 1) and rounded to bf16, prints each form's mean
absolute error of the value and of the derivative, and the derivative's mean error over
the inputs below -1, relative to its true mean there. `docs/speed.md` has the figures:
the exp form's gradient taken from the bf16 output (aten's `elu_backward` with
`is_result`, the form before) came out 5% too small there; from the saved exp it does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from beluga.model import celu_from_exp

ALPHA = 0.3


class _FromOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = celu_from_exp(x.detach(), ALPHA)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, ALPHA, 1, 1 / ALPHA, True, y)


def from_output(x: torch.Tensor) -> torch.Tensor:
    """The earlier exp form: its gradient from the bf16 output, as aten's in-place CELU."""
    return _FromOutput.apply(x)


def main() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1 << 20, dtype=torch.float64) - 0.3).to(torch.bfloat16)
    exact_x = x.double().requires_grad_()
    F.celu(exact_x, ALPHA).sum().backward()
    exact_y, exact_d = F.celu(exact_x.detach(), ALPHA), exact_x.grad
    low = x < -1
    forms = {
        "torch's kernel": lambda t: F.celu(t, ALPHA),
        "exp form, gradient from the saved exp (beluga)": lambda t: celu_from_exp(t, ALPHA),
        "exp form, gradient from the output (before)": from_output,
    }
    print(f"{torch.__version__}, bf16, {len(x):,} inputs, alpha {ALPHA}")
    print("value error | derivative error | derivative bias below -1 | form")
    for name, form in forms.items():
        t = x.clone().requires_grad_()
        y = form(t)
        y.sum().backward()
        value = (y.double() - exact_y).abs().mean()
        slope = t.grad.double() - exact_d
        bias = slope[low].mean() / exact_d[low].mean()
        print(f"{value:.2e} | {slope.abs().mean():.2e} | {bias:+7.1%} | {name}")


if __name__ == "__main__":
    main()
