"""GeM pooling and multi-scale embedding (retrieval.encoders)."""

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.encoders import gem, load_encoder, pooled_features, scales_opt
from retrieval.errors import LookalikeError
from retrieval.identity import identity_matches


def test_gem_against_a_hand_computed_value():
    fmap = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    assert gem(fmap).item() == pytest.approx(((1 + 8 + 27 + 64) / 4) ** (1 / 3), rel=1e-6)  # 25^(1/3)
    assert gem(fmap, p=1.0).item() == pytest.approx(2.5)  # p = 1 is the average
    assert gem(torch.zeros(1, 1, 2, 2)).item() == pytest.approx(1e-6)  # clamped, never 0^(1/p) gradients


def test_gem_pool_is_the_last_stage_pooled_and_part_of_the_identity():
    enc = load_encoder("random:resnet10t?size=48&pool=gem")
    avg = load_encoder("random:resnet10t?size=48")
    x = torch.randn(2, 3, 48, 48)
    fmap = enc.model.forward_features(x)
    assert torch.allclose(pooled_features(enc.model, x, "gem"), gem(fmap), atol=1e-5)
    assert enc.dim == avg.dim == 512
    assert not identity_matches(enc.identity, avg.identity)
    assert "gem" in enc.name


def test_multi_scale_averages_unit_vectors_of_each_scale():
    spec = "random:resnet10t?size=48&scales=1,0.5"
    enc = load_encoder(spec)
    assert enc.scales == (1.0, 0.5) and enc.identity["scales"] == "1,0.5"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8))
    single = load_encoder("random:resnet10t?size=48")
    both = enc.embed_images([img])
    x = torch.stack([single.preprocess(img)]).float() / 255
    mean = torch.tensor(single.mean).view(1, 3, 1, 1)
    std = torch.tensor(single.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    parts = [torch.nn.functional.normalize(pooled_features(single.model, xs, "avg"), dim=1)
             for xs in (x, torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True))]
    ref = torch.nn.functional.normalize((parts[0] + parts[1]) / 2, dim=1).numpy()
    assert np.allclose(both, ref, atol=2e-3)  # the forward may run in bf16 on this CPU (retrieval.precision)
    assert not np.allclose(both, single.embed_images([img]), atol=2e-3)  # and the second scale did count
    assert not identity_matches(enc.identity, single.identity)
    assert identity_matches(single.identity, {k: v for k, v in single.identity.items() if k != "scales"})


@pytest.mark.parametrize("bad", ["1,x", "0.1", "1,1", "9"])
def test_bad_scales_are_refused(bad):
    with pytest.raises(LookalikeError, match="scales"):
        scales_opt(bad)
