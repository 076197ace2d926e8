from __future__ import annotations

import torch
import torch.nn.functional as F
from rt.plugins.tp.layers.module import Module
from rt.plugins.tp.layers.weight_source import default_weight_loader
from torch import nn


class RMSNorm(Module):
    """RMS norm computed in float32 (as HF does); optionally adds the residual first."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        # [w, w] for _cpu_norm, rebuilt when the weight's storage changes (weights are
        # mapped or loaded once, before the first step, never updated in place after)
        self._doubled: tuple[int, torch.Tensor] | None = None

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not torch.compiler.is_dynamo_compiling():
            # compiled, the plain formula below fuses into one kernel with its neighbours
            if x.device.type == "cpu":
                return self._cpu_norm(x)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # fused on GPU
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def _cpu_norm(self, x: torch.Tensor) -> torch.Tensor:
        # On CPU F.rms_norm is a composite of ~8 operators, and between the decode step's
        # weight passes each costs ~30 us more than alone (cold caches): 61 norms took
        # ~5 ms of a ~50 ms SmolLM2 token. LayerNorm is one native kernel, and over
        # [x, -x] (mean 0, variance mean(x^2)) it computes exactly x * rsqrt(mean(x^2) +
        # eps), weighted by [w, w]: the first half is the RMS norm. A decode step took
        # ~9% less with this and the in-place residual add below (max logit change 2e-5).
        # torch.layer_norm and narrow, not F.layer_norm and [..., :h]: each skips a
        # Python layer (~10 us a call here, 61 calls a step).
        weight = self.weight
        doubled = self._doubled
        if doubled is None or doubled[0] != weight.data_ptr():
            doubled = self._doubled = (weight.data_ptr(), torch.cat([weight, weight]))
        h = x.shape[-1]
        both = torch.cat([x, x.neg()], dim=-1)
        return torch.layer_norm(both, (2 * h,), doubled[1], None, self.eps).narrow(-1, 0, h)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, H]; with a residual, returns (norm(x + residual), x + residual).
        # The sum goes into `residual` in place: it is the model's own running sum (the
        # embedding output or an earlier layer's sum), never a caller's tensor.
        if residual is None:
            return self._norm(x)
        residual.add_(x)
        return self._norm(residual), residual
