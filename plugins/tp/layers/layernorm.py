from __future__ import annotations

import torch
import torch.nn.functional as F
from rt.plugins.tp.layers.weight_source import default_weight_loader
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm computed in float32 (as HF does); optionally adds the residual first."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel, the same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, H]; with a residual, returns (norm(x + residual), x + residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
