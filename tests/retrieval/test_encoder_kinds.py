"""The encoder kinds are one table (retrieval.encoder_kinds.KINDS): a kind added at runtime as one row is built,
indexes, searches, is described and is refused where another encoder built the index, with no other change."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import nn

from app.cli import main
from retrieval import encoder_kinds
from retrieval.encoder_kinds import EncoderKind, kind_of, network_of, specs_help
from retrieval.encoders import Encoder, load_encoder
from retrieval.errors import EncoderMismatchError, LookalikeError
from retrieval.identity import describe_identity
from retrieval.index_store import IndexStore
from retrieval.workspace import Workspace
from training.settings import TrainConfig


class ColourGrid(nn.Module):
    """(B, 3, S, S) raw pixels → (B, 3·n·n) the mean colour of each cell of an n×n grid."""

    def __init__(self, n: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


def colour_grid_encoder(spec: str, device: torch.device) -> Encoder:
    n = int(spec.partition(":")[2] or 2)
    return Encoder(spec, "colourgrid", None, 16, 3 * n * n, ColourGrid(n), device=device, weights=f"grid:{n}")


ROW = EncoderKind("colourgrid", "colourgrid:N", lambda spec: spec.startswith("colourgrid:"), colour_grid_encoder,
                  network=False, describe=lambda identity: f"colour grid {identity['weights']}",
                  suggestions=("colourgrid:2",))


@pytest.fixture()
def made_up_kind(monkeypatch):
    monkeypatch.setitem(encoder_kinds.KINDS, ROW.name, ROW)
    return ROW


def test_the_built_in_kinds_answer_from_their_rows():
    assert [kind_of(s).name for s in ("pixels", "random:resnet18", "timm:x", "runs/a?pool=avg")] == [
        "pixels", "random", "timm", "run"]
    assert specs_help() == "pixels | random:NAME | timm:NAME | runs/RUN"
    assert [kind_of(s).trained for s in ("pixels", "random:x", "timm:x", "runs/a")] == [False, False, True, True]
    assert network_of("timm:tf_efficientnet_lite0?size=128") == "tf_efficientnet_lite0"
    assert network_of("runs/simclr-x?pool=grid") == "simclr-x"


def test_a_made_up_kind_indexes_searches_and_refuses_a_mismatch(made_up_kind, tmp_path, shapes_dir):
    assert kind_of("colourgrid:3") is made_up_kind and "colourgrid:N" in specs_help()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the CLI, as a user types it
        code = main(["index", "build", str(shapes_dir), "--encoder", "colourgrid:3", "--name", "grid",
                     "--indexes", str(tmp_path), "--json"])
    assert code == 0, out.getvalue()
    assert json.loads(out.getvalue())["dim"] == 27
    ws = Workspace(tmp_path)
    query = sorted(shapes_dir.rglob("*.png"))[5]
    hits = ws.search("grid", query, k=3)
    assert hits[0].path == query.relative_to(shapes_dir).as_posix() and hits[0].score == pytest.approx(1, abs=1e-5)
    manifest = IndexStore.open(tmp_path, "grid").manifest
    assert manifest["encoder"]["kind"] == "colourgrid"
    assert describe_identity(manifest["encoder"]) == "colour grid grid:3"
    for other in ("colourgrid:2", "pixels"):  # another grid, another kind: refused with the one message
        with pytest.raises(EncoderMismatchError, match="was built with colour grid grid:3"):
            ws.encoder_for(ws.store("grid"), other)
    with pytest.raises(LookalikeError, match="--init must be"):  # its row says it cannot start a training run
        TrainConfig(data_dir=str(shapes_dir), init="colourgrid:2", epochs=1).validate()


def test_an_encoder_of_a_kind_outside_the_table_is_refused():
    with pytest.raises(LookalikeError, match="not in retrieval.encoder_kinds.KINDS"):
        Encoder("x", "nonesuch", None, 16, 3, nn.Identity())
    with pytest.raises(LookalikeError, match="unknown encoder 'nonsense'"):
        load_encoder("nonsense")
