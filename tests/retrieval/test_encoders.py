import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from retrieval.encoders import build_backbone, identity_matches, load_encoder, sha256_file
from retrieval.errors import CheckpointError, LookalikeError, WeightsUnavailableError

TINY = "random:resnet10t?size=32"


def _img(colour=(200, 30, 30), size=(40, 30)):
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (5, 5))
    return im


def test_pixels_encoder_is_normalised_and_scale_invariant():
    enc = load_encoder("pixels")
    a, b = enc.embed_images([_img(), _img((30, 30, 200))])
    assert enc.dim == 3 * 32 * 32 and a.shape == (enc.dim,)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    same = enc.embed_images([_img().resize((80, 60), Image.NEAREST)])[0]  # same picture, twice the resolution
    assert float(a @ same) > 0.98
    assert float(a @ b) < float(a @ same)


def test_preprocess_resizes_shorter_side_and_centre_crops():
    enc = load_encoder("random:resnet10t?size=32")
    t = enc.preprocess(Image.new("RGB", (100, 50), (10, 20, 30)))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 32, 32)
    assert t[:, 16, 16].tolist() == [10, 20, 30]


def test_random_encoder_is_seeded_and_options_apply():
    a = load_encoder(TINY)
    b = load_encoder(TINY)
    c = load_encoder(TINY + "&seed=3")
    x = a.embed_images([_img()])
    assert np.allclose(x, b.embed_images([_img()]), atol=1e-6)
    assert not np.allclose(x, c.embed_images([_img()]), atol=1e-3)
    assert a.image_size == 32 and a.identity["weights"] == "seed:0"
    assert identity_matches(a.identity, b.identity) and not identity_matches(a.identity, c.identity)
    assert np.linalg.norm(x, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_small_stem_halves_downsampling():
    x = torch.zeros(1, 3, 64, 64)
    default = build_backbone("resnet18").eval().forward_features(x)
    small = build_backbone("resnet18", stem="small").eval().forward_features(x)
    assert default.shape[-1] == 2 and small.shape[-1] == 4
    # names and shapes unchanged: weights move between the two
    build_backbone("resnet18").load_state_dict(build_backbone("resnet18", stem="small").state_dict())


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown encoder"),
    ("random:not_a_model_xyz", "unknown timm backbone"),
    ("random:resnet18?size=abc", "must be an integer"),
    ("random:resnet18?colour=1", "unknown encoder option"),
])
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(LookalikeError, match=message):
        load_encoder(spec)


def test_timm_without_local_weights_fails_fast_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch" / "hub"))
    with pytest.raises(WeightsUnavailableError, match="never downloads"):
        load_encoder("timm:resnet10t")


def test_timm_with_local_file_loads_those_weights(tmp_path):
    model = build_backbone("resnet10t")
    torch.nn.init.constant_(model.conv1[0].weight, 0.01)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    enc = load_encoder(f"timm:resnet10t?file={path}&size=32")
    assert torch.allclose(enc.model.conv1[0].weight, torch.full_like(enc.model.conv1[0].weight, 0.01))
    assert enc.kind == "timm" and enc.identity["weights"].startswith("sha256:")


def _fake_run(tmp_path, backbone="resnet10t"):
    run = tmp_path / "run"
    run.mkdir()
    model = build_backbone(backbone, stem="small")
    save_file(model.state_dict(), str(run / "encoder.safetensors"))
    meta = {"format_version": 1, "kind": "run", "backbone": backbone, "method": "simclr", "image_size": 32,
            "dim": model.num_features, "stem": "small", "weights_sha256": sha256_file(run / "encoder.safetensors")}
    (run / "encoder.json").write_text(json.dumps(meta))
    return run, model


def test_run_directory_encoder_loads_and_verifies_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EMBED_PRECISION", "fp32")  # compared with an fp32 forward below
    run, model = _fake_run(tmp_path)
    enc = load_encoder(str(run))
    assert enc.kind == "run" and enc.stem == "small" and enc.identity["method"] == "simclr"
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    ref = torch.nn.functional.normalize(
        model.eval()((x.float() / 255 - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)),
        dim=1)
    assert np.allclose(enc.embed_uint8(x), ref.detach().numpy(), atol=1e-4)
    # a weights file that is not the one encoder.json vouches for is refused
    with open(run / "encoder.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_encoder(str(run))


def test_directory_without_encoder_json_is_not_an_encoder(tmp_path):
    with pytest.raises(CheckpointError, match="encoder.json"):
        load_encoder(str(tmp_path))


def test_grid_pooling_keeps_layout_of_the_stride16_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EMBED_PRECISION", "fp32")  # compared with an fp32 forward by hand below
    avg = load_encoder("random:resnet10t?size=64")
    grid = load_encoder("random:resnet10t?size=64&pool=grid")
    assert avg.dim == 512 and grid.dim == 256 * 16  # layer3 has 256 channels, 4x4 cells
    # the grid vector is layer3's map averaged over 4x4 cells, computed by hand here
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    xn = (x.float() / 255 - torch.tensor(grid.mean).view(1, 3, 1, 1)) / torch.tensor(grid.std).view(1, 3, 1, 1)
    m = grid.model
    with torch.no_grad():
        h = m.layer3(m.layer2(m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(xn)))))))  # (2, 256, 4, 4)
    ref = torch.nn.functional.normalize(h.flatten(1), dim=1)
    assert np.allclose(grid.embed_uint8(x), ref.numpy(), atol=1e-4)
    # an image and its mirror image: the same for avg up to noise, different places for grid
    img = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    img[:, 0, :, :20] = 255
    both = torch.cat([img, img.flip(3)])
    assert float(np.dot(*grid.embed_uint8(both))) < float(np.dot(*avg.embed_uint8(both)))
    # different pooling = different vectors: identities must not match
    assert not identity_matches(avg.identity, grid.identity) and "grid" in grid.name
    # identities written before pooling existed mean "avg"
    old = {k: v for k, v in avg.identity.items() if k != "pool"}
    assert identity_matches(old, avg.identity) and not identity_matches(old, grid.identity)
    with pytest.raises(LookalikeError, match="pool"):
        load_encoder("random:resnet10t?pool=max")


def test_run_directory_takes_a_pool_override(tmp_path):
    run, _ = _fake_run(tmp_path)
    enc = load_encoder(f"{run}?pool=grid")
    assert enc.pool == "grid" and enc.dim == 256 * 16 and enc.spec.endswith("?pool=grid")
    # the spec round-trips (an index manifest stores it and reloads the same encoder)
    again = load_encoder(enc.spec)
    assert identity_matches(enc.identity, again.identity)
    assert load_encoder(str(run)).pool == "avg"
    with pytest.raises(LookalikeError, match="allowed"):
        load_encoder(f"{run}?size=64")


def test_interpolation_is_part_of_the_identity_and_comes_from_the_run(tmp_path):
    enc = load_encoder(TINY)
    assert enc.interpolation == "bilinear" and enc.identity["interpolation"] == "bilinear"
    # identities written before interpolation existed mean "bilinear"
    old = {k: v for k, v in enc.identity.items() if k != "interpolation"}
    assert identity_matches(old, enc.identity)
    assert not identity_matches(old, {**enc.identity, "interpolation": "bicubic"})
    # a run says which filter its weights expect; an unknown one is refused
    run, _ = _fake_run(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    (run / "encoder.json").write_text(json.dumps({**meta, "interpolation": "bicubic"}))
    assert load_encoder(str(run)).interpolation == "bicubic"
    (run / "encoder.json").write_text(json.dumps({**meta, "interpolation": "sinc"}))
    with pytest.raises(LookalikeError, match="unknown interpolation 'sinc'"):
        load_encoder(str(run))
