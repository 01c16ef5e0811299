"""A masked autoencoder on the project's convolutional backbones (after He et al., MAE, 2022): the generative family.

    mask = a random fraction r of a G x G grid of patches of each view, hidden   (B, G, G), r = 0.75 as in MAE
    x~ = x with the hidden patches set to 0 (the mean colour, in the views' normalisation), plus Gaussian noise of
         std ``noise`` everywhere when ``noise`` > 0 (a denoising autoencoder, Vincent et al., 2008)
    h = f(x~)                          pooled backbone features: what the index stores          (B, feat_dim)
    x^ = decoder(h)                    light decoder: Linear -> upsampling convs                (B, 3, s, s)
    loss = MSE(x^, x at s x s) over the hidden patches only, each target patch standardised (``norm_pix``)

Where it departs from MAE, and why:

* MAE's ViT encoder drops the hidden patches and sees only the visible ones. A convolutional backbone cannot drop
  pixels, so they are blanked (as SparK and ConvNeXt V2 do before adding sparse convolutions); the BatchNorm
  statistics then see the blanks too, which shifts them between training and indexing (the reason those papers
  use sparse operations).
* The decoder starts from the *pooled* vector, not from the last feature map: everything the reconstruction
  needs must pass through the vector the index stores, whereas a decoder on the spatial map could leave the
  pooled vector free to ignore it. Its output is a thumbnail of ``out_size`` px (32 by default) compared with
  the view shrunk to that size: a pooled vector cannot carry fine detail anyway, and a full-size decoder would
  cost more than the backbone on a CPU.
* Both views are used, each with its own mask, and the two losses averaged. The views are crops and flips only
  (``views = "plain"``), as in MAE.

Masks are drawn on the CPU from torch's global generator (seeded and checkpointed by the trainer), so a resumed run
hides the same patches as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from ..losses import masked_mse
from .base import PixelDecoder, SSLMethod


def random_mask(b: int, grid: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, G, G) float mask with exactly ``round(ratio * G * G)`` ones (hidden patches) per image, on the CPU."""
    n = grid * grid
    hidden = int(round(ratio * n))
    rank = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)  # (B, G*G) a random order
    return (rank < hidden).float().view(b, grid, grid)


class MaskedAutoencoder(SSLMethod):
    name = "mae"
    views = "plain"
    needs_sync_bn = False  # a per-image reconstruction: nothing compares images through the batch statistics
    default_hparams = {"mask_ratio": 0.75, "grid": 8, "out_size": 32, "decoder_width": 128, "norm_pix": True,
                       "noise": 0.0}
    default_lr = 1e-3
    default_weight_decay = 0.05  # MAE's AdamW weight decay

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.ratio, self.grid, self.out_size = float(hp["mask_ratio"]), int(hp["grid"]), int(hp["out_size"])
        self.norm_pix, self.noise = bool(hp["norm_pix"]), float(hp["noise"])
        if not 0.0 < self.ratio < 1.0:
            raise LookalikeError(f"mask_ratio must be between 0 and 1, got {self.ratio}")
        if self.grid < 1 or self.out_size % self.grid:
            raise LookalikeError(f"out_size ({self.out_size}) must be a multiple of grid ({self.grid})")
        self.decoder = PixelDecoder(feat_dim, 3, self.out_size, int(hp["decoder_width"]))

    def corrupt(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Blank the hidden patches of ``x`` (B, 3, S, S) given ``mask`` (B, G, G); add the noise if asked."""
        keep = 1.0 - F.interpolate(mask.unsqueeze(1), size=x.shape[-2:], mode="nearest")  # (B, 1, S, S)
        x = x * keep.to(x.dtype)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape).to(x.device, x.dtype)  # CPU draw: the same on every device
        return x

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The view at the decoder's size (B, 3, s, s): area-averaged down, or bilinear up."""
        if x.shape[-1] == self.out_size:
            return x.float()
        mode = "area" if x.shape[-1] > self.out_size else "bilinear"
        return F.interpolate(x.float(), size=(self.out_size, self.out_size), mode=mode)

    def view_loss(self, x: torch.Tensor) -> torch.Tensor:
        mask = random_mask(x.shape[0], self.grid, self.ratio).to(x.device)  # (B, G, G)
        recon = self.decoder(self.backbone(self.corrupt(x, mask)))  # (B, 3, s, s)
        return masked_mse(recon, self.target(x), mask, self.out_size // self.grid, self.norm_pix)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.view_loss(x1) + self.view_loss(x2))
