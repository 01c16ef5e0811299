"""Augmentation: shapes, dtypes, reproducibility, each batched op against torchvision's per-image op."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import training.augment as A
import training.photometric as P
from retrieval.errors import LookalikeError
from training.augment import (AugmentConfig, BatchAugment, TwoViewTransform, blur_kernel_size, byol_views,
                              simclr_views, views_for)

OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)  # every photometric op disabled


def _batch(n=6, size=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _unnormalise(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    return x * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)


# -- config ---------------------------------------------------------------------------------------------------
def test_defaults_follow_simclr():
    cfg = AugmentConfig()
    assert cfg.image_size == 64 and cfg.crop_scale == (0.08, 1.0) and cfg.blur_sigma == (0.1, 2.0)
    assert cfg.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert AugmentConfig(strength=0.5).jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))


@pytest.mark.parametrize("size,k", [(8, 3), (32, 3), (64, 7), (96, 9), (100, 11), (224, 23)])
def test_blur_kernel_is_odd_and_about_ten_percent(size, k):
    assert blur_kernel_size(size) == k == AugmentConfig(image_size=size).blur_kernel


def test_blur_kernel_property_over_sizes():
    for size in range(30, 520, 7):
        k = blur_kernel_size(size)
        assert k % 2 == 1 and abs(k - 0.1 * size) <= 1


@pytest.mark.parametrize("bad,field", [
    (dict(image_size=4), "image_size"),
    (dict(image_size=64.0), "image_size"),
    (dict(strength=-0.1), "strength"),
    (dict(strength=3.0), "strength"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_ratio=(2.0, 1.0)), "crop_ratio"),
    (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
    (dict(flip_p=1.5), "flip_p"),
    (dict(gray_p=-0.2), "gray_p"),
    (dict(solarize_p=2), "solarize_p"),
    (dict(std=(0.2, 0.0, 0.2)), "std"),
])
def test_config_validation(bad, field):
    with pytest.raises(LookalikeError, match=field):
        AugmentConfig(**bad)


def test_config_json_round_trip():
    cfg = AugmentConfig(image_size=32, crop_scale=[0.2, 1.0], strength=0.5)
    assert cfg.crop_scale == (0.2, 1.0)  # lists from JSON become tuples
    assert AugmentConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- geometric part -------------------------------------------------------------------------------------------
def test_two_views_from_pil_and_tensor():
    t = TwoViewTransform(AugmentConfig(image_size=32))
    img = Image.new("RGB", (120, 90), (200, 30, 30))
    for inp in (img, img.convert("L"), TF.pil_to_tensor(img)):
        v1, v2 = t(inp)
        assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == v2.dtype == torch.uint8
    with pytest.raises(ValueError):
        t(torch.zeros(3, 8, 8))  # float, not uint8
    with pytest.raises(TypeError):
        t("not an image")


def test_presize_shrinks_large_photos_only():
    cfg = AugmentConfig(image_size=16)  # presize default 4*16: the short side stays >= 64
    t = TwoViewTransform(cfg)
    assert t._to_tensor(Image.new("RGB", (600, 400))).shape == (3, 67, 100)  # reduce(6)
    assert t._to_tensor(Image.new("RGB", (200, 100))).shape == (3, 100, 200)  # factor 1: untouched
    assert TwoViewTransform(cfg, presize=0)._to_tensor(Image.new("RGB", (600, 400))).shape == (3, 400, 600)


def test_geometric_views_differ_and_are_reproducible():
    img = TF.pil_to_tensor(Image.radial_gradient("L").convert("RGB"))  # (3, 256, 256) non-uniform content
    t = TwoViewTransform(AugmentConfig(image_size=24))
    torch.manual_seed(5)
    a1, a2 = t(img)
    torch.manual_seed(5)
    b1, b2 = t(img)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)


# -- photometric part -----------------------------------------------------------------------------------------
def test_batch_augment_shapes_and_reproducibility():
    cfg = AugmentConfig(image_size=16)
    aug = BatchAugment(cfg)
    x = _batch(8)
    out = aug(x, torch.Generator().manual_seed(3))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(4)))
    torch.manual_seed(9)  # the global RNG works too
    g1 = aug(x)
    torch.manual_seed(9)
    assert torch.equal(g1, aug(x))
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float())


def test_all_ops_off_is_just_normalisation():
    cfg = AugmentConfig(image_size=16, **OFF)
    x = _batch()
    expected = (x.float() / 255 - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(BatchAugment(cfg)(x), expected)
    # jitter always on but strength 0: factors are all 1 and the hue shift 0
    torch.testing.assert_close(BatchAugment(dataclasses.replace(cfg, jitter_p=1.0, strength=0.0))(x), expected,
                               atol=1e-5, rtol=0)


def test_grayscale_p1_gives_equal_channels():
    cfg = AugmentConfig(image_size=16, **{**OFF, "gray_p": 1.0})
    out = BatchAugment(cfg)(_batch(), normalize=False)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    raw = _unnormalise(BatchAugment(cfg)(_batch()), cfg)  # also after normalisation is undone
    torch.testing.assert_close(raw[:, 0], raw[:, 2], atol=1e-5, rtol=0)


def test_solarize_p1_inverts_pixels_above_threshold():
    cfg = AugmentConfig(image_size=16, **{**OFF, "solarize_p": 1.0})
    x = _batch()
    out = BatchAugment(cfg)(x, normalize=False)
    xf = x.float() / 255
    assert torch.equal(out, torch.where(x >= 128, 1 - xf, xf))
    torch.testing.assert_close(out, TF.solarize(xf, 0.5))


def test_probabilities_are_per_sample():
    # with p = 0.5 some images of a batch are grey and some are not
    cfg = AugmentConfig(image_size=16, **{**OFF, "gray_p": 0.5})
    out = BatchAugment(cfg)(_batch(64), torch.Generator().manual_seed(0), normalize=False)
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 10 < int(grey.sum()) < 54


@pytest.mark.parametrize("op,tv", [
    (P.brightness, TF.adjust_brightness),
    (P.contrast, TF.adjust_contrast),
    (P.saturation, TF.adjust_saturation),
])
def test_jitter_ops_match_torchvision(op, tv):
    x = _batch(5).float() / 255
    f = torch.tensor([0.2, 0.7, 1.0, 1.3, 1.8])
    expected = torch.stack([tv(x[i], float(f[i])) for i in range(5)])
    torch.testing.assert_close(op(x.clone(), f), expected, atol=1e-6, rtol=0)


def test_hue_matches_torchvision_and_hsv_round_trips():
    x = _batch(5).float() / 255
    x[0, :, :4] = 0.5  # grey pixels (no hue)
    x[1, 1] = x[1, 0]  # ties between red and green
    f = torch.tensor([-0.5, -0.2, 0.0, 0.13, 0.5])
    expected = torch.stack([TF.adjust_hue(x[i], float(f[i])) for i in range(5)])
    torch.testing.assert_close(P.hue(x, f), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.hsv_to_rgb(P.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_blur_matches_torchvision_per_sample_sigma():
    x = torch.rand(4, 3, 12, 10)
    sigma = torch.tensor([0.1, 0.6, 1.2, 2.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(4)])
    torch.testing.assert_close(P.gaussian_blur(x, sigma, 5), expected, atol=1e-6, rtol=0)


# -- pipelines ------------------------------------------------------------------------------------------------
def test_simclr_and_byol_pipelines():
    cfg = AugmentConfig(image_size=16, blur_p=0.3, solarize_p=0.4)
    s = simclr_views(cfg)
    assert s.view1.cfg == s.view2.cfg == cfg
    b = byol_views(cfg)
    assert (b.view1.cfg.blur_p, b.view2.cfg.blur_p) == (1.0, 0.1)
    assert (b.view1.cfg.solarize_p, b.view2.cfg.solarize_p) == (0.0, 0.2)
    assert b.view1.cfg.gray_p == b.view2.cfg.gray_p == cfg.gray_p
    img = Image.new("RGB", (40, 30), (10, 120, 240))
    v1, v2 = b.geometric(img)
    x1, x2 = b(torch.stack([v1, v1]), torch.stack([v2, v2]), generator=torch.Generator().manual_seed(0))
    assert x1.shape == x2.shape == (2, 3, 16, 16) and x1.dtype == torch.float32
    assert b.mean == cfg.mean and b.std == cfg.std


def test_views_for_every_method_and_unknown():
    from training.methods import METHODS

    assert set(A.VIEWS) == set(METHODS)
    assert views_for("byol").view1.cfg.blur_p == 1.0
    with pytest.raises(LookalikeError, match="simclr"):
        views_for("vicreg")
