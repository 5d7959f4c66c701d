"""Batch-invariant linear layers: an image's numbers must not depend on its batch neighbours.

Matrix-product libraries choose their kernel, blocking and summation order from the shape, and
for a product with only a few rows the row count (here: the batch size) changes that choice, so
the same row can come out different in the last bit when computed with 2 rows or with 8. In SDXL
the layers whose rows are images, not tokens, are of that kind: the UNet's time and
added-condition embeddings, every ResNet block's time-embedding projection, and the pooled
text-embedding projection. Measured on CPU (MKL), these were the only layers whose outputs changed
with the batch size; convolutions, group norms, attention and the token-wise linears (M = batch x
tokens) gave identical bits.

``make_batch_invariant(module)`` turns every ``nn.Linear`` in a module into one that computes a
2-D input one row at a time (a product of one row, whatever the batch); 3-D inputs (tokens) take the
normal path. The weights, state-dict keys and results for one image are unchanged; the cost is a
few hundred tiny products per denoising step, negligible beside the convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RowwiseLinear(torch.nn.Linear):
    """``nn.Linear`` whose 2-D inputs are multiplied one row at a time (batch-invariant results)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Linear's own name)
        if input.dim() == 2 and input.shape[0] > 1:
            return torch.cat([F.linear(row, self.weight, self.bias) for row in input.split(1)])
        return F.linear(input, self.weight, self.bias)


def make_batch_invariant(module: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` inside ``module`` a ``RowwiseLinear``, in place; return how many."""
    count = 0
    for sub in module.modules():
        if type(sub) is torch.nn.Linear:
            sub.__class__ = RowwiseLinear
            count += 1
    return count
