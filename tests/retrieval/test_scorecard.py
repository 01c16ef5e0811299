"""The label-free scorecard: collapse scores low, small and broken folders, determinism, marks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from retrieval import scorecard as sc
from retrieval.encoders import Encoder, load_encoder
from retrieval.errors import LookalikeError
from retrieval.synthetic import make_collection


def _paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


class _Constant(nn.Module):
    """A collapsed backbone: the same vector whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 8)


class _OneLine(nn.Module):
    """A rank-1 backbone: ±v by the image's mean brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = torch.sign(x.mean(dim=(1, 2, 3)) - x.mean() + 1e-6)
        return sign[:, None] * torch.ones(x.shape[0], 8)


def _fake(model: nn.Module) -> Encoder:
    return Encoder("fake", "random", "fake", 32, 8, model)


def test_collapsed_encoders_score_low_and_pixels_do_not(shapes_dir):
    paths = _paths(shapes_dir)
    good = sc.score_encoder(load_encoder("pixels"), paths)
    assert good.score > 0.3
    for model in (_Constant(), _OneLine()):
        card = sc.score_encoder(_fake(model), paths)
        assert card.parts["effective_rank"] < 1.5
        assert card.score < 0.05 and card.ci[1] < 0.05
        # stability alone would reward collapse (every neighbour list is the same): the health gate stops it
        assert card.score < good.score


def test_tiny_folder_uses_every_image(tmp_path):
    make_collection(tmp_path, n_classes=2, per_class=2, size=32, labelled=False)
    card = sc.score_folder("pixels", tmp_path, sample=100)
    assert card.n_images == 4 and card.n_queries == 4 and card.n_copies == 4 * sc.COPIES_PER_QUERY
    assert 0.0 <= card.ci[0] <= card.score <= card.ci[1] <= 1.0


def test_too_few_images_is_a_clear_error(tmp_path):
    make_collection(tmp_path, n_classes=1, per_class=2, size=32, labelled=False)
    with pytest.raises(LookalikeError, match="at least 3"):
        sc.score_folder("pixels", tmp_path)


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    make_collection(tmp_path, n_classes=3, per_class=3, size=32, labelled=False)
    good = _paths(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    data = Path(good[0]).read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])  # a valid header, cut pixels
    card = sc.score_folder("pixels", tmp_path)
    reported = {Path(s["path"]).name for s in card.skipped}
    assert {"empty.png", "text.jpg", "truncated.png"} <= reported
    assert card.n_images == len(good)


def test_same_seed_same_card_other_seed_other_queries(shapes_dir):
    paths = _paths(shapes_dir)
    enc = load_encoder("pixels")
    a = sc.score_encoder(enc, paths, seed=3, sample=20).to_json()
    b = sc.score_encoder(enc, list(reversed(paths)), seed=3, sample=20).to_json()
    for card in (a, b):
        card.pop("seconds")
    assert a == b
    assert sc.choose_sample(paths, 3, 20) != sc.choose_sample(paths, 4, 20)
    assert json.loads(json.dumps(a))["ci"] == a["ci"]


def test_score_embedded_matches_score_encoder(shapes_dir):
    paths = _paths(shapes_dir)
    enc = load_encoder("pixels")
    vectors = enc.embed_images([Image.open(p).convert("RGB") for p in paths])
    direct = sc.score_encoder(enc, paths, seed=1)
    from_vectors = sc.score_embedded(enc, paths, vectors, seed=1)
    assert from_vectors.score == pytest.approx(direct.score, abs=1e-6)


def test_marks_are_counted_and_agreement_follows_them(shapes_dir):
    paths = _paths(shapes_dir)
    same = [p for p in paths if Path(p).parent == Path(paths[0]).parent]
    other = [p for p in paths if Path(p).parent != Path(paths[0]).parent]
    enc = load_encoder("pixels")
    right = [(same[0], s, True) for s in same[1:3]]
    card = sc.score_encoder(enc, paths, marks=right + [(same[0], other[-1], False)])
    assert card.parts["marks_n"] == 3
    assert 0.0 <= card.parts["marks"] <= 1.0
    # marks no encoder can agree with (a right answer that is the farthest image) pull the score down
    far = np.argsort(enc.embed_images([Image.open(p).convert("RGB") for p in paths]) @
                     enc.embed_images([Image.open(same[0]).convert("RGB")])[0])[0]
    wrong_way = [(same[0], paths[far], True)] * 40
    assert sc.score_encoder(enc, paths, marks=wrong_way).score < sc.score_encoder(enc, paths).score


def test_eval_label_free_json_contract(shapes_dir, capsys):
    from app.cli import main

    specs = ["pixels", "random:resnet10t?size=32"]
    assert main(["eval", str(shapes_dir), "--label-free", "--json", "--sample", "20",
                 *[x for s in specs for x in ("--encoder", s)]]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["encoder"] for r in rows] == specs
    for r in rows:
        lf = r["label_free"]
        assert isinstance(lf["score"], float) and len(lf["ci"]) == 2 and lf["ci"][0] <= lf["score"] <= lf["ci"][1]
        assert {"copy_recall@1", "stability@10", "rankme"} <= set(lf)
        assert lf["n_images"] == 20
