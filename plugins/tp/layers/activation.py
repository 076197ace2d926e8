from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` for the merged gate/up projection output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, 2*I_local] -> [T, I_local]
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
