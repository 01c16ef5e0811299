"""End-to-end: build → search → add/remove/refresh through Workspace and the CLI, on generated images."""

import json
import os
import shutil

import pytest
from PIL import Image

from app.cli import main
from retrieval.errors import EncoderMismatchError
from retrieval.workspace import Workspace, evaluate_folder
from retrieval.encoders import load_encoder

ENCODERS = ["pixels", "random:resnet18?size=64"]


@pytest.fixture()
def collection(tmp_path, shapes_dir):
    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    return col


def _edits(src, tmp_path):
    """Resized, lightly cropped and low-quality JPEG copies of ``src``."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    out = {}
    out["resized"] = tmp_path / "resized.png"
    im.resize((w * 3, h * 3), Image.BICUBIC).save(out["resized"])
    out["cropped"] = tmp_path / "cropped.png"
    im.crop((2, 2, w - 2, h - 2)).save(out["cropped"])
    out["jpeg"] = tmp_path / "low.jpg"
    im.save(out["jpeg"], quality=25)
    return out


@pytest.mark.parametrize("spec", ENCODERS)
def test_query_and_edited_copies_find_the_original(tmp_path, collection, spec):
    ws = Workspace(tmp_path / "indexes")
    report = ws.build(collection, spec, "idx", progress=False)
    assert report.count == 36 and not report.skipped
    target = "circle-0/000.png" if (collection / "circle-0").exists() else sorted(
        p.relative_to(collection).as_posix() for p in collection.rglob("000.png"))[0]
    top = ws.search("idx", collection / target, k=5)
    assert top[0].path == target and top[0].score == pytest.approx(1.0, abs=1e-4)
    for kind, path in _edits(collection / target, tmp_path).items():
        assert ws.search("idx", path, k=3)[0].path == target, kind


def test_add_remove_refresh_touch_only_what_changed(tmp_path, collection):
    ws = Workspace(tmp_path / "indexes")
    ws.build(collection, "pixels", "idx", progress=False)
    victim = sorted(collection.rglob("001.png"))[0]
    rel = victim.relative_to(collection).as_posix()
    assert ws.remove("idx", [rel]).removed == 1
    assert rel not in ws.store("idx").items()
    assert ws.add("idx", [victim]).added == 1
    assert ws.store("idx").count == 36
    # refresh: one new, one changed, one deleted file; nothing else is re-embedded
    new = collection / "new.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(new)
    changed = sorted(collection.rglob("002.png"))[0]
    Image.new("RGB", (40, 40), (250, 0, 0)).save(changed)
    os.utime(changed, (1, 1))
    gone = sorted(collection.rglob("003.png"))[0]
    gone.unlink()
    report = ws.refresh("idx", progress=False)
    assert (report.added, report.removed) == (2, 1)
    assert report.count == 36
    assert ws.search("idx", new, k=1)[0].path == "new.png"
    assert ws.refresh("idx", progress=False).added == 0


def test_mismatched_encoder_is_refused(tmp_path, collection):
    ws = Workspace(tmp_path / "indexes")
    ws.build(collection, "pixels", "idx", progress=False)
    with pytest.raises(EncoderMismatchError, match="built with pixels"):
        ws.search("idx", next(collection.rglob("*.png")), encoder_spec="random:resnet10t?size=32")


def test_cli_build_search_info_and_errors(tmp_path, collection, capsys):
    (collection / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    root = str(tmp_path / "ix")
    assert main(["index", "build", str(collection), "--encoder", "pixels", "--name", "cli", "--indexes", root,
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["count"] == 36 and built["dim"] == 3072 and built["encoder"]["kind"] == "pixels"
    assert [s["path"] for s in built["skipped"]] == ["broken.jpg"]
    query = sorted(collection.rglob("004.png"))[0]
    assert main(["search", "cli", str(query), "-k", "3", "--indexes", root, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0] == {"rank": 1, "path": query.relative_to(collection).as_posix(), "score": pytest.approx(1.0, abs=1e-4)}
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert main(["index", "info", "cli", "--indexes", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 36
    assert main(["search", "missing", str(query), "--indexes", root]) == 2
    assert "no index named 'missing'" in capsys.readouterr().err
    assert main(["search", "cli", str(collection / "broken.jpg"), "--indexes", root]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_eval_reports_metrics_and_pixels_beat_shuffled_labels(shapes_dir, capsys):
    metrics = evaluate_folder(shapes_dir, load_encoder("pixels"), progress=False)
    assert metrics["count"] == 36 and metrics["classes"] == 6
    assert 0 <= metrics["map@10"] <= 1 and metrics["recall@1"] > 1 / 6  # better than chance on 6 classes
    assert main(["eval", str(shapes_dir), "--encoder", "pixels", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"recall@1", "recall@5", "recall@10", "map@10", "knn_acc"}
