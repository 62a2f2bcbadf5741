"""Batched, reproducible training augmentation: random crop with zero padding and horizontal
flip for a whole uint8 batch at once, on the batch's device.

Each image's crop offsets and flip are a hash of (seed, epoch, image index), never of a
global random generator, so a resumed run, or a run on another number of processes, sees
exactly the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer mix (no int64 overflow: operands stay below 2**32 * 2**27)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return ((x >> 16) ^ x) & _M32


def augmentation_bits(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """Deterministic pseudo-random 32-bit integers, shape ``index.shape`` (one per image),
    for (seed, epoch, stream)."""
    key = _hash32(_hash32((seed & _M32) ^ 0x5BD1E995) ^ (epoch & _M32))
    return _hash32(_hash32((index.long() * 4 + stream) & _M32) ^ key)


def random_crop_flip(x: torch.Tensor, index: torch.Tensor, seed: int, epoch: int, padding: int = 4,
                     crop: bool = True, flip: bool = True) -> torch.Tensor:
    """Batched random crop (zero padding ``padding``, same size out) and horizontal flip of
    ``x`` (B, C, H, W), any dtype, on x's device; ``index`` (B,) are the images' dataset
    indices. Offsets/flips depend only on (seed, epoch, index). Returns (B, C, H, W)."""
    b, _, h, w = x.shape
    index = index.to(x.device)
    if crop and padding > 0:
        span = 2 * padding + 1
        dy = augmentation_bits(seed, epoch, index, 0) % span
        dx = augmentation_bits(seed, epoch, index, 1) % span
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = padded[bidx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,H,W,C) -> (B,C,H,W)
    if flip:
        f = ((augmentation_bits(seed, epoch, index, 2) >> 11) & 1).bool()
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


__all__ = ["augmentation_bits", "random_crop_flip"]
