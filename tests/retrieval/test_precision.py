"""The precision an encoder embeds in: bf16 autocast where the hardware has it natively, fp32 elsewhere; float32
vectors either way, close enough that an index built in one precision answers queries embedded in the other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import precision
from retrieval.encoders import load_encoder
from retrieval.errors import LookalikeError

CPU = torch.device("cpu")
TINY = "random:resnet10t?size=32"


def _images(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_auto_follows_the_cpus_bf16_instructions_and_the_environment_overrides(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.embed_dtype(CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.embed_dtype(CPU) is None  # emulated bf16 is slower than fp32
    assert precision.embed_dtype(CPU, "bf16") is torch.bfloat16  # asked for, it is given
    monkeypatch.setenv(precision.ENV, "bf16")
    assert precision.embed_dtype(CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV, "FP32")
    assert precision.embed_dtype(CPU) is None
    monkeypatch.setenv(precision.ENV, "half")
    with pytest.raises(LookalikeError, match="LOOKALIKE_EMBED_PRECISION"):
        precision.embed_dtype(CPU)


def test_an_encoder_takes_its_precision_from_the_rule(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV, "auto")
    assert load_encoder(TINY).autocast is torch.bfloat16
    monkeypatch.setenv(precision.ENV, "fp32")
    assert load_encoder(TINY).autocast is None
    assert load_encoder("pixels").autocast is None  # no model to run


def test_bf16_vectors_are_float32_and_agree_with_fp32(monkeypatch):
    monkeypatch.setenv(precision.ENV, "fp32")
    full = load_encoder(TINY)
    monkeypatch.setenv(precision.ENV, "bf16")
    half = load_encoder(TINY)
    images = _images()
    a, b = full.embed_images(images), half.embed_images(images)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a, b)  # the forward really ran in bf16
    assert float((a * b).sum(axis=1).min()) > 0.99
    # the neighbours each precision finds are the same
    assert (np.argsort(-(a @ a.T), axis=1)[:, 1] == np.argsort(-(b @ a.T), axis=1)[:, 1]).all()
