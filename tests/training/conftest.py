"""Fixtures for trainer tests: a folder of 64 small generated images and a fast tiny-run config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from torch import nn

from training.trainer import TrainConfig

# A small timm backbone that runs a step of any method at 32 px in well under a second on 2 cores.
TINY_BACKBONE = "resnet10t"
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ((220, 40, 40), (40, 170, 60), (40, 70, 220), (230, 190, 30))


def draw(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """A filled shape on a light noisy background, placed and scaled at random."""
    bg = rng.integers(180, 256, 3)
    pixels = np.clip(bg + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(r, size - r, 2)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, int(r / 2))
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=colour, width=w)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=colour, width=w)
    return img


def make_images(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/<shape>/<colour>_<i>.png``: 4 shapes x 4 colours x ``per_class`` images of 32-48 px (64 by default)."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for c, colour in enumerate(COLOURS):
            for i in range(per_class):
                size = int(rng.integers(32, 49))
                draw(shape, colour, size, rng).save(root / shape / f"c{c}_{i}.png")
    return root


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """64 generated images in four labelled sub-folders (usable as training data and as a --val folder)."""
    return make_images(tmp_path_factory.mktemp("train_images"))


@pytest.fixture
def tiny_config(tmp_path, image_dir):
    """``tiny_config(**overrides) -> TrainConfig``: 1 epoch of 4 steps at 32 px, batch 16, no workers, fp32 CPU.

    The overrides are what the test "typed": they are recorded as the explicit settings (``TrainConfig.explicit``),
    as ``lookalike train`` records its flags, so a resume takes every other defining setting from the run."""

    def make(**overrides) -> TrainConfig:
        base = TrainConfig(data_dir=str(image_dir), method="simclr", backbone=TINY_BACKBONE, image_size=32,
                           batch_size=16, epochs=1, out=str(tmp_path / "run"), device="cpu", precision="fp32",
                           workers=0, log_every=1, seed=0)
        return dataclasses.replace(base, **overrides, explicit=tuple(overrides))

    return make


def tiny_backbone() -> nn.Module:
    """(B, 3, H, W) -> (B, 16): two strided convs with BatchNorm, global average pool (works down to 4 px)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def check_method_contract(m, inputs, fresh) -> None:
    """What every method owes the trainer: a finite scalar loss whose gradients reach every backbone weight, every
    trainable parameter in exactly one optimiser group, and a state dict that loads strictly into ``fresh`` (a new
    instance of the same method) and equals the original (nothing derived is saved)."""
    import io

    import torch

    loss = m(*inputs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.backbone.parameters())
    assert any(p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    in_groups = [p for g in m.param_groups(0.1) for p in g["params"]]
    assert sorted(map(id, in_groups)) == sorted(id(p) for p in m.parameters() if p.requires_grad)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # strict: same keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in m.state_dict().items())
