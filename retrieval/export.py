"""Export an encoder to ONNX: uint8 images in, the vectors :meth:`Encoder.embed_uint8` makes out, in one graph.

The graph takes ``images``: uint8 (B, 3, S, S), RGB, already resized (shorter side to S) and centre-cropped as
:meth:`Encoder.preprocess` does, and returns ``vectors``: float32 (B, dim), L2-normalised. Everything after the
crop is inside: scaling to [0, 1], the mean/std normalisation, the backbone, the pooling (``avg`` or ``grid``) and
the L2 normalisation, in fp32 (the batch size is free). Beside ``OUT`` a ``OUT.json`` records the encoder's
identity and the preprocessing a caller must do itself (image size, resize filter), so an exported model is never
mistaken for another encoder's.

ONNX Runtime (the optional extra ``onnx``) runs the file: :class:`OnnxEmbedder` is the same forward as the
encoder's, for callers that want it without torch's eager forward.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encoders import Encoder, pooled_features
from .errors import LookalikeError
from .fsutil import atomic_write_json

OPSET = 17
DYNAMO_OPSET = 18  # the lowest the torch.export-based exporter writes
INPUT, OUTPUT = "images", "vectors"
EXTRA = "onnx"  # the pyproject extra that brings ONNX Runtime
MISSING_RUNTIME = f"ONNX Runtime is not installed: pip install 'lookalike[{EXTRA}]' (or pip install onnxruntime)"


class EmbeddingGraph(nn.Module):
    """:meth:`Encoder.embed_uint8` as a module, in fp32: uint8 (B, 3, S, S) → float32 (B, dim), unit rows."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.model, self.pool, self.pixels = encoder.model, encoder.pool, encoder.kind == "pixels"
        self.register_buffer("mean", torch.tensor(encoder.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(encoder.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0  # (B, 3, S, S) in [0, 1]
        if self.pixels:
            z = x.flatten(1)  # (B, 3·S·S)
            z = z - z.mean(dim=1, keepdim=True)
        else:
            z = pooled_features(self.model, (x - self.mean) / self.std, self.pool)  # (B, dim)
        return F.normalize(z, dim=1, eps=1e-12)


def sidecar(path: str | Path) -> Path:
    """Where the identity of the model at ``path`` is written (``OUT.json``)."""
    return Path(f"{path}.json")


def export_onnx(encoder: Encoder, out: str | Path, opset: int = OPSET) -> Path:
    """Write ``encoder`` as an ONNX graph to ``out`` (atomically) and its identity to ``out.json``; return ``out``."""
    out = Path(out)
    if out.is_dir():
        raise LookalikeError(f"{out} is a folder; give the path of the .onnx file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = EmbeddingGraph(encoder).to("cpu").eval()
    example = torch.zeros(2, 3, encoder.image_size, encoder.image_size, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _export(graph, example, tmp, opset)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_json(sidecar(out), {"encoder": encoder.identity, "input": INPUT, "output": OUTPUT,
                                     "input_layout": "uint8 (B, 3, S, S) RGB, shorter side resized to S then "
                                                     "centre-cropped", "image_size": encoder.image_size,
                                     "interpolation": encoder.interpolation, "dim": encoder.dim, "opset": opset})
    return out


def _export(graph: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    """torch's TorchScript-based exporter (fast, no extra package); where it lacks an operator (``pool=grid`` on a
    feature map smaller than its 4x4 grid), the ``torch.export`` one, which needs ``onnxscript`` (extra ``onnx``)."""
    names = {"input_names": [INPUT], "output_names": [OUTPUT]}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes are not the user's
        try:
            torch.onnx.export(graph, (example,), path, dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                              opset_version=opset, dynamo=False, **names)
            return
        except torch.onnx.errors.OnnxExporterError as exc:
            legacy = exc
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise LookalikeError(f"cannot export this encoder with torch's TorchScript exporter ({legacy}); the "
                                 f"other exporter needs onnxscript: pip install 'lookalike[{EXTRA}]'") from None
        torch.onnx.export(graph, (example,), path, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                          opset_version=max(opset, DYNAMO_OPSET), dynamo=True, verbose=False, **names)


class OnnxEmbedder:
    """An exported graph under ONNX Runtime: uint8 (B, 3, S, S) → float32 (B, dim), as the encoder embeds them."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise LookalikeError(MISSING_RUNTIME) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed_uint8(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        x = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.uint8)})[0]
