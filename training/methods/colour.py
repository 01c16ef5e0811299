"""Colourisation (Zhang, Isola & Efros, 2016): predict an image's colours from its grey version.

    y = grey(x)                        the views' luma as a grey RGB image, in the views' normalisation (B, 3, S, S)
    h = f(y)                           pooled backbone features: what the index stores            (B, feat_dim)
    logits = decoder(h)                colour-class scores on an s x s map (s = ``out_size``)    (B, Q, s, s)
    target = bins(chroma(x at s x s))  each cell's (Cb, Cr) cut into ``bins`` x ``bins`` classes  (B, s, s)
    loss = sum_cells w[target] * cross-entropy(logits, target) / cells      Q = bins^2
    w = rebalance(p), p a running histogram of the colour classes (a buffer: it survives a checkpoint)

Why colourisation rather than inpainting, for the "recover the whole from a part" family: inpainting with a
reconstruction loss is the masked autoencoder (``mae``) with one large hole, so it would add little that ``mae``
does not measure; colourisation hides a different part of the signal (the chroma, given every pixel's luma), and
its loss is the family's distinctive one: a classification over quantised colours with rare colours up-weighted
instead of a pixel regression, which Zhang et al. introduced because regression gives the "conservative", greyish
averages the survey criticises. The adversarial term that some members of the family add is left out.

Where it departs from the paper: the chroma is YCbCr's (a linear map of RGB) rather than CIE Lab's, quantised on a
uniform ``bins`` x ``bins`` grid over [-0.5, 0.5] (the paper: 313 in-gamut Lab bins of size 10); the classes are
hard (the paper soft-encodes each pixel over its 5 nearest bins); the decoder starts from the pooled vector (as in
``mae``) and predicts a coarse ``out_size`` map. The network sees grey images during training while the index
embeds colour ones: its features are colour-blind by construction, a trade that helps where copies are recoloured
and hurts where colour is what tells two images apart. Crops and flips only (``views = "plain"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import colour_bins, colour_loss, rebalance_weights
from ..photometric import luma
from .base import PixelDecoder, SSLMethod

CHROMA_LIMIT = 0.5  # YCbCr's chroma of [0, 1] RGB lies in [-0.5, 0.5]


def chroma(p: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (B, 3, H, W) -> (B, 2, H, W): YCbCr's (Cb, Cr) = (0.564 (B - Y), 0.713 (R - Y))."""
    y = luma(p)
    return torch.cat([0.564 * (p[:, 2:3] - y), 0.713 * (p[:, 0:1] - y)], dim=1)


class Colourisation(SSLMethod):
    name = "colour"
    views = "plain"
    needs_sync_bn = False  # a per-image prediction
    default_hparams = {"bins": 8, "out_size": 16, "decoder_width": 128, "rebalance": 0.5, "freq_momentum": 0.99}
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.bins, self.out_size = int(hp["bins"]), int(hp["out_size"])
        self.lam, self.freq_momentum = float(hp["rebalance"]), float(hp["freq_momentum"])
        if self.bins < 2 or not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.freq_momentum < 1.0:
            raise LookalikeError("colour needs bins >= 2, rebalance in [0, 1] and freq_momentum in [0, 1)")
        q = self.bins * self.bins
        self.decoder = PixelDecoder(feat_dim, q, self.out_size, int(hp["decoder_width"]))
        self.register_buffer("class_freq", torch.full((q,), 1.0 / q))  # running histogram p of the colour classes

    def grey(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised colour views -> the same views in grey (B, 3, S, S), in the views' normalisation."""
        return self.normalised(luma(self.pixels(x)).expand(-1, 3, -1, -1)).to(x.dtype)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised views -> (B, s, s) colour classes of the area-averaged s x s cells."""
        p = self.pixels(x)
        if p.shape[-1] != self.out_size:
            p = F.interpolate(p, size=(self.out_size, self.out_size), mode="area" if p.shape[-1] > self.out_size
                              else "bilinear")
        return colour_bins(chroma(p), self.bins, CHROMA_LIMIT)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x1, x2])  # (2B, 3, S, S): both views in one pass
        target = self.targets(x)  # (2B, s, s)
        logits = self.decoder(self.backbone(self.grey(x)))  # (2B, Q, s, s)
        loss = colour_loss(logits, target, rebalance_weights(self.class_freq, self.lam) if self.lam else None)
        if self.training:  # p <- m p + (1 - m) histogram of this (global) batch
            hist = torch.bincount(target.flatten(), minlength=self.class_freq.numel()).float()
            hist = D.all_reduce_mean(hist / hist.sum())
            self.class_freq.mul_(self.freq_momentum).add_(hist, alpha=1.0 - self.freq_momentum)
        return loss
