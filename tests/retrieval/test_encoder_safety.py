"""Loading encoders never unpickles code, and a run directory is only used when encoder.json vouches for it."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from retrieval.encoders import build_backbone, load_encoder, sha256_file
from retrieval.errors import CheckpointError, WeightsUnavailableError


class Payload:
    """Unpickling this creates a directory: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def poisoned_pickle(tensors: dict, marker) -> bytes:
    buf = io.BytesIO()
    torch.save({**tensors, "extra": Payload(marker)}, buf)
    return buf.getvalue()


def write_run(run, weights: bytes | None = None, **meta_overrides):
    """A run directory for a small-stem resnet10t, with encoder.json vouching for ``encoder.safetensors``."""
    run.mkdir()
    model = build_backbone("resnet10t", stem="small")
    if weights is None:
        save_file(model.state_dict(), str(run / "encoder.safetensors"))
    else:
        (run / "encoder.safetensors").write_bytes(weights)
    meta = {"format_version": 1, "kind": "run", "backbone": "resnet10t", "method": "simclr", "image_size": 32,
            "dim": model.num_features, "stem": "small", "weights_sha256": sha256_file(run / "encoder.safetensors")}
    meta.update(meta_overrides)
    (run / "encoder.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return run, model


def test_a_pickle_posing_as_run_weights_is_never_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"
    state = build_backbone("resnet10t", stem="small").state_dict()
    run, _ = write_run(tmp_path / "run", weights=poisoned_pickle(state, marker))  # sha256 matches: only the format is wrong
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(str(run))
    assert not marker.exists()


def test_a_pickle_given_as_timm_weights_is_never_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "evil.pth"
    weights.write_bytes(poisoned_pickle(build_backbone("resnet10t").state_dict(), marker))
    with pytest.raises(WeightsUnavailableError, match="could not be loaded as weights for 'resnet10t'"):
        load_encoder(f"timm:resnet10t?file={weights}&size=32")
    assert not marker.exists()


@pytest.mark.parametrize("overrides, message", [
    ({"format_version": 2}, "format_version 2"),
    ({"weights_sha256": None}, "lacks weights_sha256"),
    ({"dim": None}, "lacks dim"),
    ({"backbone": None}, "lacks backbone"),
])
def test_an_encoder_json_of_another_format_or_with_missing_fields_is_refused(tmp_path, overrides, message):
    run, _ = write_run(tmp_path / "run", **overrides)
    with pytest.raises(CheckpointError, match=message):
        load_encoder(str(run))


def test_weights_missing_a_tensor_do_not_load_half_random(tmp_path):
    state = build_backbone("resnet10t", stem="small").state_dict()
    first = next(iter(state))
    del state[first]
    (tmp_path / "w").mkdir()
    save_file(state, str(tmp_path / "w" / "partial.safetensors"))
    run, _ = write_run(tmp_path / "run", weights=(tmp_path / "w" / "partial.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit backbone 'resnet10t'"):
        load_encoder(str(run))


def test_random_bytes_given_as_timm_weights_get_a_clear_error(tmp_path):
    weights = tmp_path / "noise.safetensors"
    weights.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsUnavailableError, match="could not be loaded as weights"):
        load_encoder(f"timm:resnet10t?file={weights}&size=32")
