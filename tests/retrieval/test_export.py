"""``lookalike export RUN_OR_SPEC --onnx OUT``: the exported graph makes the encoder's own vectors.

The round trip needs ONNX Runtime, which comes with the optional extra ``onnx`` (and the ``dev`` extra)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main
from retrieval.encoders import load_encoder
from retrieval.export import OnnxEmbedder, export_onnx, sidecar
from tests.retrieval.test_encoder_safety import write_run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: the export round trip needs the "
                                          "optional extra 'onnx' (pip install 'lookalike[onnx]')")

SPECS = ["random:resnet10t?size=32", "random:resnet10t?size=32&pool=grid", "pixels"]


def _fp32(spec: str):
    encoder = load_encoder(spec)
    encoder.autocast = None  # the fp32 forward, as the graph runs it (bf16 is the CPU's default where native)
    return encoder


def _images(encoder, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, encoder.image_size, encoder.image_size), dtype=torch.uint8, generator=g)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("spec", SPECS)
def test_the_exported_model_makes_the_encoders_vectors(tmp_path, spec):
    encoder = _fp32(spec)
    out = export_onnx(encoder, tmp_path / "model.onnx")

    images = _images(encoder)
    got = OnnxEmbedder(out).embed_uint8(images)
    want = encoder.embed_uint8(images)
    assert got.shape == want.shape == (len(images), encoder.dim) and got.dtype == np.float32
    assert _cosines(got, want).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # any batch size: one image gives the same vector as in the batch
    assert _cosines(OnnxEmbedder(out).embed_uint8(images[:1]), want[:1]).min() >= 0.999
    assert json.loads(sidecar(out).read_text())["encoder"] == encoder.identity


def test_a_trained_run_exports_through_the_cli(tmp_path, capsys):
    run, _ = write_run(tmp_path / "run")
    out = tmp_path / "exported" / "run.onnx"

    assert main(["export", str(run), "--onnx", str(out), "--json"]) == 0

    reported = json.loads(capsys.readouterr().out)
    encoder = _fp32(str(run))
    assert reported["onnx"] == str(out) and reported["encoder"] == encoder.identity
    images = _images(encoder)
    assert _cosines(OnnxEmbedder(out).embed_uint8(images), encoder.embed_uint8(images)).min() >= 0.999
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.onnx", "run.onnx.json"]  # no temporary left


def test_an_unknown_encoder_is_refused_in_one_line(tmp_path, capsys):
    assert main(["export", "random:no_such_net", "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "m.onnx").exists()
