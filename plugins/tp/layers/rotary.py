"""Rotary position embedding (neox / HF ``rotate_half`` layout) with Llama 3 scaling.

cos/sin are computed from the step's positions once per forward and shared by all
layers, so no ``max_position_embeddings``-long table is allocated.
"""

from __future__ import annotations

import math

import torch
from rt.plugins.tp.layers.module import Module
from rt.plugins.tp.model_config import RopeScaling


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


class RotaryEmbedding(Module):
    """Rotary embedding applied as one complex multiply over interleaved pairs.

    HF checkpoints rotate dimension ``i`` with ``i + D/2`` ("rotate_half"). The model
    permutes the q and k rows of each head once at load (:func:`interleave_rows`) so
    that the pairs sit next to each other; attention scores are unchanged because q and
    k are permuted alike. Then ``x * (cos + i sin)`` over ``view_as_complex`` rotates
    every head of q and k in one operation instead of seven per tensor.
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        # [D/2] on the model's device, built on first use (the model may be built on the
        # meta device)
        self._inv_freq: torch.Tensor | None = None

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [T] -> freqs_cis: [T, 1, D/2] complex64, shared by all layers
        freqs = self._freqs(positions)
        return torch.polar(torch.ones_like(freqs), freqs).unsqueeze(1)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For :func:`apply_rotary`: ``cos`` and ``sin``, each ``[T, 1, D/2]`` float32."""
        freqs = self._freqs(positions).unsqueeze(1)
        return freqs.cos(), freqs.sin()

    def _freqs(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [T] -> [T, D/2] angles
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            # a compiled step finds it made by the eager step before (or by prepare)
            self.prepare(positions.device)
        return positions.float().unsqueeze(-1) * self._inv_freq

    def prepare(self, device: torch.device) -> None:
        """Make the frequencies on ``device`` now (before compiling a step that uses them)."""
        freqs = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        self._inv_freq = freqs.to(device)


def apply_rotary_(x: torch.Tensor, freqs_cis: torch.Tensor) -> None:
    """Rotate ``x`` in place (a view into the QKV projection output: no copy of q, k)."""
    # x: [T, H, D] with interleaved pairs, rows may be strided; freqs_cis: [T, 1, D/2]
    pairs = x.view(*x.shape[:-1], -1, 2)  # [T, H, D/2, 2]
    if x.dtype == torch.float32:  # one op instead of six: ~6 us less per layer on CPU
        torch.view_as_complex(pairs).mul_(freqs_cis)
        return
    rotated = torch.view_as_complex(pairs.float()) * freqs_cis  # no complex bf16 in torch
    pairs.copy_(torch.view_as_real(rotated))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` rotated, as a new tensor in real arithmetic: the form a compiled step fuses
    (Inductor generates no complex kernels). Same pairs as :func:`apply_rotary_`."""
    # x: [T, H, D] with interleaved pairs; cos, sin: [T, 1, D/2]
    pairs = x.float().unflatten(-1, (-1, 2))  # [T, H, D/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def interleave_rows(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from ``[0..D/2), [D/2..D)`` to ``0, D/2, 1, D/2+1, ...``."""
    # weight: [num_heads * D, ...] (a weight or a bias)
    rest = weight.shape[1:]
    halves = weight.reshape(num_heads, 2, head_dim // 2, *rest)
    return halves.transpose(1, 2).reshape(num_heads * head_dim, *rest)
