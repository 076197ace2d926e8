"""Rotary position embedding (neox / HF ``rotate_half`` layout) with Llama 3 scaling.

cos/sin are computed from the step's positions once per forward and shared by all
layers, so no ``max_position_embeddings``-long table is allocated.
"""

from __future__ import annotations

import math

import torch
from rt.plugins.tp.model_config import RopeScaling
from torch import nn


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    # inv_freq: [D/2], float32
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling is None:
        return inv_freq
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the middle blended.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        # One per device, built on first use (the model may be built on the meta device).
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] -> cos, sin: [T, 1, D/2], computed in float32, cast once for all layers
        inv_freq = self._inv_freq.get(positions.device)
        if inv_freq is None:
            inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)
            inv_freq = self._inv_freq.setdefault(positions.device, inv_freq.to(positions.device))
        freqs = positions.float().unsqueeze(-1) * inv_freq
        return freqs.cos().unsqueeze(1).to(dtype), freqs.sin().unsqueeze(1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D]; cos, sin: [T, 1, D/2] in x's dtype (see RotaryEmbedding.forward)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
