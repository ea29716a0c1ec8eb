"""Label-smoothed cross-entropy; for training, fused
with the output projection and computed in row chunks.

The loss of a target token t under logits x (V classes) with smoothing s is
    (1 - s) * (lse(x) - x_t) + s * (lse(x) - mean(x)),       lse = logsumexp,
i.e. cross-entropy against (1 - s) on t plus s spread uniformly, the same as
`F.cross_entropy(..., label_smoothing=s)`. Its gradient is softmax(x) - (1 - s) * onehot(t) - s / V.

Training never holds the (N, V) logits: `projected_loss` takes the decoder states h (N, D) and the
output matrix W (V, D), and for a few hundred rows at a time computes the logits h W^T, the loss,
the gradient of the logits and from it the gradients of h and W, while the chunk is still in the
CPU's cache. The gradients are made in the forward pass (the loss is the graph's last node: backward
only scales them by the incoming scalar). On a CPU the N x V passes then stay in cache instead of
going to memory and back six times (docs/speed.md); on a GPU it is one chunk, and the (N, V)
buffers are never kept for backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nmt.tokenizer import PAD

# logits per chunk: 8 MB of fp32 fits a CPU's cache; a GPU takes all
CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**28}


def _chunk(
    logits: Tensor, target: Tensor, smoothing: float, grad: bool
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Summed loss and NLL over the non-pad rows of fp32 logits (c, V); with `grad`, also d loss / d
    logits, written over the logits' own buffer."""
    real = target != PAD
    lp = torch.log_softmax(logits, dim=-1)
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    loss = (1.0 - smoothing) * nll - smoothing * lp.mean(dim=-1) if smoothing else nll
    # where(), not boolean indexing: indexing needs the
    # count of real tokens on the host (a device sync)
    sums = torch.where(real, loss, 0.0).sum(), torch.where(real, nll, 0.0).sum()
    if not grad:
        return *sums, None
    g = torch.exp(lp, out=logits)  # softmax
    if smoothing:
        g.sub_(smoothing / g.size(-1))
    g.scatter_add_(1, target[:, None], g.new_full((g.size(0), 1), -(1.0 - smoothing)))
    return *sums, g.mul_(real[:, None])


class _ProjectedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        smoothing: float,
        grad: bool,
        dtype: torch.dtype,
    ):
        h, w = hidden.to(dtype), weight.to(dtype)
        # softmax, sums and the gradient of W: fp32 at least
        acc = torch.promote_types(dtype, torch.float32)
        rows = max(1, CHUNK_ELEMENTS.get(hidden.device.type, 2**21) // weight.size(0))
        loss = nll = hidden.new_zeros((), dtype=acc)
        dh = torch.empty_like(h) if grad else None
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if grad else None
        for i in range(0, h.size(0), rows):
            hc = h[i : i + rows]
            l_sum, n_sum, g = _chunk((hc @ w.t()).to(acc), target[i : i + rows], smoothing, grad)
            loss, nll = loss + l_sum, nll + n_sum
            if g is not None:
                g = g.to(dtype)
                torch.mm(g, w, out=dh[i : i + rows])
                dw += g.t() @ hc
        ctx.mark_non_differentiable(nll)
        if grad:
            ctx.save_for_backward(dh, dw)
        ctx.dtypes, ctx.grad, ctx.done = (hidden.dtype, weight.dtype), grad, False
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss: Tensor, g_nll: Tensor):
        if not ctx.grad or ctx.done:
            raise RuntimeError(
                "the fused loss was computed without gradients, or is back-propagated a second time"
            )
        ctx.done = True
        dh, dw = ctx.saved_tensors
        # scaled in fp32: a fp16 loss scale times 1/tokens would underflow in the compute dtype
        return (
            (dh.to(dw.dtype) * g_loss).to(ctx.dtypes[0]),
            (dw * g_loss).to(ctx.dtypes[1]),
            None,
            None,
            None,
            None,
        )


def projected_loss(
    hidden: Tensor, weight: Tensor, target: Tensor, smoothing: float
) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy of logits hidden @ weight^T, and the plain NLL (for reporting:
    it carries no gradient), both summed over non-pad targets. hidden (N, D), weight (V, D), target
    (N,). Under autocast the matmuls run in its dtype, as nn.Linear's would; the softmax in fp32."""
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(dev, enabled=False):
        return _ProjectedCrossEntropy.apply(hidden, weight, target, smoothing, grad, dtype)


def loss_fn(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """The same loss and NLL from logits (B, T, V), target (B, T), differentiated by autograd (for
    small uses: it keeps several (N, V) buffers)."""
    logits = logits.reshape(-1, logits.size(-1))
    return _chunk(
        logits.to(torch.promote_types(logits.dtype, torch.float32)),
        target.reshape(-1),
        smoothing,
        False,
    )[:2]


class Objective(nn.Module):
    """What training minimises, as one module so that DDP and torch.compile wrap all of it: the
    model's decoder states, projected by its output matrix and scored in chunks. Returns (loss sum,
    NLL sum) over real targets."""

    def __init__(self, model: nn.Module, smoothing: float):
        super().__init__()
        if getattr(model.output, "bias", None) is not None:
            raise ValueError("the fused loss handles an output projection without bias")
        self.model, self.smoothing = model, smoothing

    def forward(
        self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor
    ) -> tuple[Tensor, Tensor]:
        h = self.model.features(src, src_pad_mask, tgt_in)  # (B, T, D)
        return projected_loss(
            h.reshape(-1, h.size(-1)), self.model.output.weight, tgt_out.reshape(-1), self.smoothing
        )
