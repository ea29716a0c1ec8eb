"""Number formats: which one training and decoding use on a device.

`auto` means bf16 where the hardware multiplies bf16 matrices natively (CUDA GPUs; CPUs with
AVX512-BF16 or AMX, where a bf16 matmul runs several times faster than fp32) and fp32 elsewhere (a
CPU without them would emulate bf16, slower than fp32). Training autocasts (weights stay fp32);
decoding casts the weights.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECODE_CHOICES = ("auto", "fp32", "bf16")
# int8 weights are CTranslate2's: torch's own int8 for CPU inference (dynamic quantization) is
# deprecated, and was slower than an export to CTranslate2 on every CPU measured (docs/speed.md)
INT8_GONE = (
    "--precision int8: nmt decodes in fp32 or bf16; for int8 weights on a CPU, export the model "
    "(nmt export --checkpoint P --output DIR --quantization int8) and decode with "
    "CTranslate2 (docs/usage.md)"
)


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    # private, hence the getattr: absent means no
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of `train.precision` on `device`; None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def describe(device: torch.device, precision: str) -> str:
    """How training runs, for the log line: 'bf16 autocast' or 'fp32'."""
    dtype = autocast_dtype(device, precision)
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")


def choose_attention_kernels(device: torch.device) -> None:
    """On a GPU, leave cuDNN's attention out of what scaled_dot_product_attention may pick (it keeps
    flash, memory-efficient and math). Recent torch puts cuDNN first on Hopper and Blackwell GPUs,
    and cuDNN builds an execution graph for every new problem, keyed by batch size and lengths
    (torch's cudnn/MHA.cpp); bucketed batches bring a new shape at almost every step of the first
    epoch, which made those steps slow (docs/speed.md). A process-wide setting of torch's
    (torch.backends.cuda.enable_cudnn_sdp), set when a model is put on a GPU."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def decode_precision(device: torch.device, asked: str) -> str:
    """The weights decoding uses: fp32 or bf16 (`asked` is one of DECODE_CHOICES)."""
    if asked == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return asked


# bf16 decoding on a CPU pads its rows by this (see padded_rows; models/incremental.step)
ROW_MULTIPLE = 64


def padded_rows(n: int, multiple: int) -> int:
    """`n` rows rounded up for oneDNN's kernels (one built per row count, see decode_row_multiple):
    to a multiple of multiple/4 up to 2 x multiple rows, of multiple/2 up to 4 x multiple, then of
    multiple: tiers waste fewer rows than one multiple for all counts, and still bound how many
    kernels are built. `multiple` 1: no padding."""
    if multiple <= 1:
        return n
    step = max(
        multiple // 4 if n <= 2 * multiple else multiple // 2 if n <= 4 * multiple else multiple, 1
    )
    return -(-n // step) * step


def decode_row_multiple(device: torch.device, precision: str) -> int:
    """The row multiple decoding pads by (padded_rows): 64 for bf16 on a CPU, where torch hands the
    products to oneDNN, which builds a kernel for every new shape, and beam search changes the row
    count whenever a sentence finishes; 1 (no padding) elsewhere: fp32 products go to MKL, which
    builds nothing per shape."""
    return ROW_MULTIPLE if device.type == "cpu" and precision == "bf16" else 1


class PackedLinear(nn.Module):
    """A bf16 nn.Linear for decoding on a CPU, its weight
    packed once into the blocked layout oneDNN multiplies in.

    torch's bf16 products on a CPU go to oneDNN, which otherwise repacks the
    weight at every call, a large share of a layer's time at the few rows of
    a decoding step (the outputs are bit-identical). Uses the operators
    torch's own compiler emits for CPU inference (torch.ops.mkldnn).

    oneDNN also builds a kernel for every new number of rows, so the rows
    are padded (padded_rows with `rows`): a decoding step pads them once
    for all its layers (models/incremental.step); the encoder's batches (sentences
    x positions rows, a new count nearly every batch) are padded here.

    `relu`: the layer applies ReLU to its output, in the same kernel (oneDNN's post-op: one pass
    less over the output; ReLU commutes with the rounding to bf16, so the result is the same)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], rows: int, relu: bool = False):
        """weight (out, in) and bias (out,) of an nn.Linear, bf16; `rows`: the row count the packing
        is tuned for, and what the rows are padded by (padded_rows)."""
        super().__init__()
        self.out_features, self.rows, self.attr = weight.size(0), rows, "relu" if relu else "none"
        self.weight = nn.Parameter(
            torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows), requires_grad=False
        )
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        n = x.numel() // x.size(-1)
        pad = padded_rows(n, self.rows) - n
        if not pad:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], "")
        padded = F.pad(x.reshape(n, x.size(-1)), (0, 0, 0, pad))
        y = torch.ops.mkldnn._linear_pointwise(padded, self.weight, self.bias, self.attr, [], "")
        return y[:n].view(*x.shape[:-1], self.out_features)


def can_pack(rows: int = ROW_MULTIPLE) -> bool:
    """Whether this torch build packs bf16 weights for oneDNN and the packed product equals the
    plain one (checked on fixed numbers: the global random generator is left alone)."""
    w = ((torch.arange(48 * 32).view(48, 32) % 7 - 3) / 8).to(torch.bfloat16)
    x = ((torch.arange(5 * 32).view(5, 32) % 5 - 2) / 4).to(torch.bfloat16)
    try:
        return torch.equal(PackedLinear(w, None, rows)(x), F.linear(x, w)) and torch.equal(
            PackedLinear(w, None, rows, relu=True)(x), F.relu(F.linear(x, w))
        )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack_linear_layers(module: nn.Module, rows: int = ROW_MULTIPLE) -> nn.Module:
    """Swap every bf16 nn.Linear inside `module` on a CPU for a PackedLinear (in place, as torch's
    quantize_dynamic swaps modules; for inference only); returns `module`. A Linear followed by an
    nn.ReLU in an nn.Sequential takes the ReLU into its kernel (the ReLU becomes an nn.Identity).
    Where this torch build cannot pack (`can_pack`), the layers stay as they are."""
    if not can_pack(rows):
        return module

    def swap(parent: nn.Module) -> None:
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if (
                type(child) is nn.Linear
                and child.weight.dtype == torch.bfloat16
                and child.weight.device.type == "cpu"
            ):
                relu = (
                    isinstance(parent, nn.Sequential)
                    and i + 1 < len(children)
                    and type(children[i + 1][1]) is nn.ReLU
                )
                setattr(parent, name, PackedLinear(child.weight, child.bias, rows, relu))
                if relu:
                    setattr(parent, children[i + 1][0], nn.Identity())
            else:
                swap(child)

    swap(module)
    return module
