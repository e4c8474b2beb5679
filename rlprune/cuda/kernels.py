"""Linear layers as a CUDA GPU runs them deployed: 2:4 sparse through cuSPARSELt, and int8.

Each module takes and returns activations in the network's float dtype (FP16 or BF16), so a
policy swaps any Linear for one of them without touching its neighbours, and a latency table
times exactly the module the deployed network runs (:mod:`rlprune.hardware.local_gpu`).

* :class:`SemiSparseLinear`: the weight 2:4 sparse, compressed once by cuSPARSELt
  (``torch._cslt_compress``). The product is taken as ``W x^T`` with the result transposed in
  the kernel and the bias added in its epilogue, so the output comes back row-major, as
  ``F.linear``'s: nothing after it copies a transposed result (docs/gpu.md, "Deploying 2:4").
* :class:`Int8Linear`: int8 weights (symmetric, per output channel) and an int8 input
  (asymmetric, per tensor, over a calibrated range), as the finetune simulates them
  (:mod:`rlprune.quant`); the product in INT32 through ``torch._int_mm`` (dense) or
  cuSPARSELt (2:4), then dequantized with the zero point's correction folded into a
  per-channel offset.

cuSPARSELt and ``torch._int_mm`` need the rows of the input padded (to 8 and 16; ``_int_mm``
more than 16): the modules pad and slice, and the padding is part of their time.
"""

from __future__ import annotations

import torch
from torch import nn

_INT8_LEVELS = 255


def _pad_rows(x: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """``x`` (2-D) with zero rows appended up to a multiple of ``multiple`` (and above ``minimum``)."""
    rows = x.shape[0]
    target = max(rows, minimum + 1 if minimum else 0)
    target += (-target) % multiple
    if target == rows:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, target - rows))


# What each kernel needs of a Linear's (in_features, out_features): multiples of these
ALIGNMENT = {"sparse": 16, "int8": 8, "int8_sparse": 32}


def linear_kernel(in_features: int, out_features: int, two_four: bool, int8: bool) -> str:
    """The kernel a GPU runs a Linear with: ``dense``, ``sparse``, ``int8`` or ``int8_sparse``.

    ``two_four`` and ``int8`` say what the policy asks for; a kernel whose alignment
    (:data:`ALIGNMENT`: cuSPARSELt's and ``torch._int_mm``'s) the shape misses falls back to
    the next one that runs: int8 2:4 to int8, 2:4 or int8 to dense.
    """
    wanted = (
        ("int8_sparse", "int8")
        if int8 and two_four
        else ("int8",)
        if int8
        else ("sparse",)
        if two_four
        else ()
    )
    for kernel in wanted:
        if in_features % ALIGNMENT[kernel] == 0 and out_features % ALIGNMENT[kernel] == 0:
            return kernel
    return "dense"


def _int8_transposed_result() -> bool:
    """Whether cuSPARSELt hands an int8 product's INT32 result back transposed (versions differ)."""
    global _INT8_TRANSPOSE
    if _INT8_TRANSPOSE is None:
        w = torch.zeros(32, 64, dtype=torch.int8, device="cuda")
        w[:, ::2] = 1
        x = torch.ones(32, 64, dtype=torch.int8, device="cuda")
        try:
            out = torch._cslt_sparse_mm(
                torch._cslt_compress(w), x.t(), out_dtype=torch.int32, transpose_result=True
            )
            _INT8_TRANSPOSE = tuple(out.shape) == (32, 32) and bool((out == 32).all())
        except RuntimeError:
            _INT8_TRANSPOSE = False
    return _INT8_TRANSPOSE


_INT8_TRANSPOSE: bool | None = None


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every run of 4 consecutive weights along the input dimension has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _check_two_four(weight: torch.Tensor, where: str) -> None:
    if not is_two_four(weight):
        raise ValueError(
            f"{where}: the weight must be 2:4 sparse along its input dimension (a multiple of 4 "
            "long); apply an N:M mask with keep=2, group=4 first"
        )


class SemiSparseLinear(nn.Module):
    """``y = x W^T + b`` with a 2:4 sparse ``W`` on sparse tensor cores (cuSPARSELt).

    Args:
        weight: ``out x in``, already 2:4 sparse, FP16 or BF16, on a CUDA device.
        bias: ``out`` or ``None``, same dtype and device.

    Raises:
        ValueError: when ``weight`` is not 2:4 sparse.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        _check_two_four(weight, "SemiSparseLinear")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("packed", torch._cslt_compress(weight.detach().contiguous()))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SemiSparseLinear:
        """The sparse twin of ``linear`` (its weight already 2:4)."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``... x in``) to ``... x out``, row-major."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        padded = _pad_rows(flat, 8)
        out = torch._cslt_sparse_mm(self.packed, padded.t(), bias=self.bias, transpose_result=True)
        return out[: flat.shape[0]].reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4 cuSPARSELt"


class Int8Linear(nn.Module):
    """``y = x W^T + b`` in int8 with INT32 accumulation, input and output in float.

    Args:
        weight: ``out x in`` float weights (2:4 sparse already when ``sparse``).
        bias: ``out`` or ``None``.
        low, high: the calibrated range of the input (widened to hold 0).
        sparse: run the product on sparse tensor cores (cuSPARSELt, CUDA only).

    Raises:
        ValueError: when ``sparse`` and ``weight`` is not 2:4 sparse.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, low: float, high: float, sparse: bool = False
    ) -> None:
        super().__init__()
        if sparse:
            _check_two_four(weight, "Int8Linear(sparse=True)")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.sparse = sparse
        w = weight.detach().float()
        w_scale = w.abs().amax(1).clamp_min(1e-12) / 127
        wq = torch.round(w / w_scale[:, None]).clamp(-127, 127)
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        x_scale = max((high - low) / _INT8_LEVELS, 1e-12)
        zero = round(-low / x_scale)
        # x ~ x_scale * (q + 128 - zero) for the stored q = clamp(round(x / s) + zero, 0, 255) - 128
        scale = x_scale * w_scale
        offset = (128 - zero) * wq.sum(1) * scale + (0 if bias is None else bias.detach().float())
        self.inv_x_scale, self.shift = 1.0 / x_scale, float(zero - 128)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        wq8 = wq.to(torch.int8)
        self.register_buffer("weight_q", torch._cslt_compress(wq8) if sparse else wq8.contiguous())

    def quantize_input(self, flat: torch.Tensor) -> torch.Tensor:
        """The input rows as stored int8 (``q = clamp(round(x / s) + zero, 0, 255) - 128``)."""
        q = torch.round(flat.float() * self.inv_x_scale) + self.shift
        return q.clamp_(-128, 127).to(torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``... x in``, float) to ``... x out`` in the same float dtype."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        q = _pad_rows(self.quantize_input(flat), 16 if self.sparse else 8, minimum=0 if self.sparse else 16)
        if self.sparse and _int8_transposed_result():
            acc = torch._cslt_sparse_mm(self.weight_q, q.t(), out_dtype=torch.int32, transpose_result=True)
        elif self.sparse:
            acc = torch._cslt_sparse_mm(self.weight_q, q.t(), out_dtype=torch.int32).t()
        else:
            acc = torch._int_mm(q, self.weight_q.t())
        out = torch.addcmul(self.offset, acc[: flat.shape[0]].float(), self.scale)
        return out.to(x.dtype, memory_format=torch.contiguous_format).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        kind = "2:4 cuSPARSELt" if self.sparse else "dense _int_mm"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kind}"
