"""Cutting a batch of views into a grid of patches, and per-patch colour jitter (Jigsaw and CPC).

Both work on the normalised float views the trainer hands a method, batched, with per-sample random numbers from
torch's global generator (or an explicit one), so a seeded run and its resume see the same patches.
"""

from __future__ import annotations

import torch

from ..photometric import luma

__all__ = ["grid_patches", "jitter_patches"]

def grid_patches(x: torch.Tensor, grid: int, patch: int, stride: int, max_offset: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, patch, patch) patches in row-major order.

    The patch of row i, column j starts at ``(i * stride + dy, j * stride + dx)`` with ``dy, dx`` drawn uniformly
    from ``[0, max_offset]`` per image and patch (0: a fixed grid). Jigsaw uses ``stride = cell`` and a ``patch``
    smaller than the cell, so the random offset leaves a gap of random width between neighbouring tiles; CPC uses
    ``patch = 2 * stride`` (50% overlap) and no offset.
    """
    b, c, h, w = x.shape
    extent = (grid - 1) * stride + patch + max_offset
    if grid < 1 or patch < 1 or stride < 1 or max_offset < 0 or extent > min(h, w):
        raise ValueError(f"a {grid}x{grid} grid of {patch}px patches at stride {stride} (+ up to {max_offset}px "
                         f"offset) needs {extent}px, the views are {h}x{w}")
    n = grid * grid
    start = (torch.arange(grid) * stride).view(1, grid, 1)  # (1, G, 1)
    if max_offset:
        off = torch.randint(0, max_offset + 1, (b, n, 2), generator=generator)  # (B, G*G, 2) CPU
    else:
        off = torch.zeros(b, n, 2, dtype=torch.long)
    rows = start.expand(b, grid, grid).reshape(b, n) + off[..., 0]  # (B, G*G) top edge of each patch
    cols = start.transpose(1, 2).expand(b, grid, grid).reshape(b, n) + off[..., 1]  # (B, G*G) left edge
    span = torch.arange(patch)
    rows = (rows.unsqueeze(-1) + span).to(x.device)  # (B, G*G, P)
    cols = (cols.unsqueeze(-1) + span).to(x.device)  # (B, G*G, P)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    out = x.permute(0, 2, 3, 1)[bi, rows.unsqueeze(-1), cols.unsqueeze(-2)]  # (B, G*G, P, P, C)
    return out.permute(0, 1, 4, 2, 3).contiguous()


def jitter_patches(patches: torch.Tensor, strength: float = 0.4, gray_p: float = 0.3,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent colour jitter per patch, then per-patch standardisation; (..., C, P, P) -> same shape.

    Each patch gets its own per-channel gain ``1 + u * strength`` and shift ``u * strength`` (u uniform in
    [-1, 1]), is turned to grey with probability ``gray_p``, and is finally standardised to zero mean and unit
    variance over its pixels and channels. Neighbouring patches then no longer agree in colour, brightness or
    contrast, so a network cannot solve the task by matching those low-level cues across patch borders (Noroozi &
    Favaro normalise every tile and jitter its colours for this reason; CPC v2 augments every patch on its own).
    """
    lead, (c, p1, p2) = patches.shape[:-3], patches.shape[-3:]
    x = patches.reshape(-1, c, p1, p2).float()  # (T, C, P, P)
    t = x.shape[0]
    u = torch.rand(t, 2 * c + 1, generator=generator).to(x.device)  # (T, 2C+1)
    gain = 1.0 + strength * (2.0 * u[:, :c] - 1.0)
    shift = strength * (2.0 * u[:, c:2 * c] - 1.0)
    x = x * gain.view(t, c, 1, 1) + shift.view(t, c, 1, 1)
    if c == 3 and gray_p > 0:
        grey = luma(x).expand_as(x)
        x = torch.where((u[:, -1] < gray_p).view(t, 1, 1, 1), grey, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    x = (x - mean) / (std + 1e-5)
    return x.to(patches.dtype).reshape(*lead, c, p1, p2)
