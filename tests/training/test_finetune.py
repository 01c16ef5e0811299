"""Fine-tuning (``--init``): a run starts from exactly the given weights, takes the init's backbone, image size,
normalisation, pooling and resize filter, gets the fine-tuning defaults for what was not given, freezes the
BatchNorm statistics, records the init's identity, and resumes without it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from retrieval.encoders import load_encoder
from retrieval.errors import LookalikeError
from retrieval.init_weights import load_init
from tests.retrieval.test_encoder_safety import write_run
from tests.retrieval.test_pretrained import LITE0, weights_of
from training.distributed import Distributed
from training.finetune import FINETUNE_DEFAULTS, resolve_sources
from training.optim import default_lr
from training.settings import add_arguments, config_from_args
from training.setup import make_method
from training.trainer import train

INIT_NORM = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}


@pytest.fixture
def init_run(tmp_path):
    """An earlier run: a small-stem resnet10t for 32 px, its own normalisation and the bicubic filter."""
    run, _ = write_run(tmp_path / "earlier", interpolation="bicubic", **INIT_NORM)
    return run


def test_the_init_decides_backbone_size_normalisation_and_the_finetune_defaults(tiny_config, init_run):
    cfg, sources = resolve_sources(tiny_config(init=str(init_run), batch_size=16))
    assert (cfg.backbone, cfg.stem, cfg.image_size, cfg.pool) == ("resnet10t", "small", 32, "avg")
    aug = cfg.augment_config()
    assert list(aug.mean) == INIT_NORM["mean"] and list(aug.std) == INIT_NORM["std"]
    assert aug.crop_scale == (0.3, 1.0) and aug.strength == 0.375 and aug.gray_p == 0.0
    assert cfg.batchnorm == "frozen"
    from training.methods import METHODS

    assert cfg.lr == pytest.approx(default_lr("adamw", 16, METHODS["simclr"]) * FINETUNE_DEFAULTS["lr_scale"])
    assert sources.interpolation == "bicubic" and sources.record["init"]["weights"] == load_init(str(init_run)).weights
    # what the user gave wins over the init and the fine-tuning defaults
    given, _ = resolve_sources(tiny_config(init=str(init_run), batch_size=16, image_size=48, lr=0.01, batchnorm="batch",
                                           augment={"strength": 1.0}))
    assert (given.image_size, given.lr, given.batchnorm) == (48, 0.01, "batch")
    assert given.augment["strength"] == 1.0 and given.augment["crop_scale"] == (0.3, 1.0)
    assert given.batch_size == 16  # given (tiny_config): kept
    # a batch not given: the fine-tuning batch (224 px pretrained backbones at the from-scratch 128 run out of memory)
    from training.config import TrainConfig

    untold = TrainConfig(data_dir=tiny_config().data_dir, init=str(init_run), epochs=1)
    assert resolve_sources(untold)[0].batch_size == FINETUNE_DEFAULTS["batch_size"]
    # without an init nothing changes but "auto" BatchNorm, which is the usual batch statistics
    plain, sources = resolve_sources(tiny_config())
    assert plain.lr is None and plain.augment == {} and plain.batchnorm == "batch" and sources.record == {}


def test_the_run_starts_from_exactly_the_init_weights(tiny_config, init_run):
    cfg, sources = resolve_sources(tiny_config(init=str(init_run), batch_size=16))
    views = cfg.augment_config()
    method, _ = make_method(cfg, Distributed.start("cpu"), sources, views)
    saved = load_file(str(init_run / "encoder.safetensors"))
    own = method.backbone.state_dict()
    assert own.keys() == saved.keys() and all(torch.equal(own[k], saved[k]) for k in saved)


def test_a_conflicting_backbone_or_stem_is_refused_and_an_equal_one_accepted(tiny_config, init_run):
    with pytest.raises(LookalikeError, match="--backbone resnet18 conflicts with --init .*resnet10t"):
        resolve_sources(tiny_config(init=str(init_run), backbone="resnet18"))
    with pytest.raises(LookalikeError, match="--stem default conflicts"):
        resolve_sources(tiny_config(init=str(init_run), stem="default"))
    cfg, _ = resolve_sources(tiny_config(init=str(init_run), backbone="resnet10t"))
    assert cfg.backbone == "resnet10t"


def test_init_and_teacher_are_flags_and_a_bad_init_is_refused_early(tmp_path, image_dir):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args([str(image_dir), "--init", "timm:tf_efficientnet_lite0", "--epochs", "1"]))
    assert cfg.init == "timm:tf_efficientnet_lite0" and cfg.given("init") and not cfg.given("image_size")
    bad = config_from_args(parser.parse_args([str(image_dir), "--init", "random:resnet10t", "--epochs", "1"]))
    with pytest.raises(LookalikeError, match="--init must be a pretrained spec"):
        bad.validate()
    with pytest.raises(LookalikeError, match="nowhere: no such training run directory"):
        train(config_from_args(parser.parse_args([str(image_dir), "--init", str(tmp_path / "nowhere"), "--epochs",
                                                  "1", "--out", str(tmp_path / "run")])), progress=False)
    assert not (tmp_path / "run").exists()


def test_finetune_trains_records_the_init_freezes_bn_and_resumes_without_it(tiny_config, init_run, tmp_path):
    copy = tmp_path / "init-copy"  # removed before the resume: a resumed run needs its checkpoint only
    shutil.copytree(init_run, copy)
    run = train(tiny_config(init=str(copy), batch_size=16, keep_best=False), progress=False)
    meta = json.loads((run / "encoder.json").read_text())
    assert (meta["backbone"], meta["stem"], meta["image_size"], meta["interpolation"]) == (
        "resnet10t", "small", 32, "bicubic")
    assert meta["mean"] == INIT_NORM["mean"] and meta["std"] == INIT_NORM["std"]
    assert meta["init"]["spec"] == str(copy.resolve()) and meta["init"]["weights"] == load_init(str(copy)).weights
    start, trained = load_file(str(copy / "encoder.safetensors")), load_file(str(run / "encoder.safetensors"))
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start[k], trained[k]) for k in stats)  # BatchNorm statistics frozen
    assert not torch.equal(start["conv1.0.weight"], trained["conv1.0.weight"])  # ... the weights trained
    enc = load_encoder(str(run))  # indexes as the init does
    assert (enc.interpolation, enc.mean, enc.image_size) == ("bicubic", tuple(INIT_NORM["mean"]), 32)

    shutil.rmtree(copy)
    with pytest.raises(LookalikeError, match="init="):
        train(tiny_config(init=str(init_run), batch_size=16, epochs=2, resume=True), progress=False)
    resumed = train(tiny_config(epochs=2, resume=True), progress=False)
    again = json.loads((resumed / "encoder.json").read_text())
    assert again["step"] == 8 and again["init"] == meta["init"] and again["interpolation"] == "bicubic"
    assert again["config"]["lr"] == meta["config"]["lr"] and again["config"]["init"] == str(copy)


def test_a_pretrained_spec_gives_its_native_size_and_normalisation(tiny_config):
    file = weights_of(LITE0)
    cfg, sources = resolve_sources(tiny_config(init=f"timm:{LITE0}"))
    assert (cfg.backbone, cfg.image_size, sources.interpolation) == (LITE0, 224, "bicubic")
    assert cfg.augment["mean"] == cfg.augment["std"] == (0.5, 0.5, 0.5)
    assert sources.record["init"]["weights"].startswith("sha256:") and file.is_file()


def test_frozen_batchnorm_holds_in_train_mode_in_momentum_copies_and_after_conversion():
    from retrieval.encoders import build_backbone, feature_dim
    from training.finetune import freeze_batchnorm, freeze_layers, frozen_layers
    from training.methods import build_method
    from training.sync_bn import convert_global_bn

    backbone = build_backbone("resnet10t")
    freeze_batchnorm(backbone)
    method = build_method("byol", backbone, feature_dim(backbone)).train()  # deep-copies it into its target
    names = frozen_layers(method)
    assert any(n.startswith("backbone.") for n in names) and any(n.startswith("target") for n in names)
    assert not any(n.startswith(("projector", "predictor")) for n in names)  # new heads keep batch statistics
    method = convert_global_bn(method)
    assert frozen_layers(method) == []  # a swapped layer loses the hook ...
    freeze_layers(method, names)  # ... which the trainer puts back
    assert frozen_layers(method) == names
    stats = {k: v.clone() for k, v in method.state_dict().items() if k.endswith("running_mean")}
    method.train()(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).backward()
    after = method.state_dict()
    frozen = [k for k in stats if k.rsplit(".", 1)[0] in names]
    assert frozen and all(torch.equal(stats[k], after[k]) for k in frozen)
    assert any(not torch.equal(stats[k], after[k]) for k in stats if k not in frozen)  # the heads' BN learn


def test_an_init_under_the_home_folder_is_loaded_from_where_it_was_checked(tmp_path, monkeypatch):
    from training import finetune

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()  # a folder, but no run in it: the loader, not the path check, must answer
    with pytest.raises(LookalikeError) as err:
        finetune._load("init", "~/run")
    assert "no such training run directory" not in str(err.value) and str(tmp_path / "run") in str(err.value)
