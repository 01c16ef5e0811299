"""The training settings model: one declaration per setting, from which the CLI flags, the UI form and the
validation come; what the user gave is recorded, and a resume refuses a given option that contradicts the run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys

import pytest

from retrieval.errors import LookalikeError
from retrieval.identity import POOLS, STEMS
from training import settings as S
from training.config import TrainConfig
from training.methods import METHODS
from training.trainer import train


def train_parser() -> argparse.ArgumentParser:
    from app.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def parse(*argv: str) -> argparse.Namespace:
    return train_parser().parse_args(list(argv))


# -- one declaration ---------------------------------------------------------------------------------------------
def test_the_settings_modules_and_the_method_names_need_no_torch():
    code = ("import sys; import training.settings as S, training.config, app.cli; from training.methods import METHODS; "
            "names = S.choices_of(S.setting('method')); assert names == tuple(METHODS), names; "
            "assert not {'torch', 'timm', 'faiss'} & set(sys.modules), sorted({'torch', 'timm', 'faiss'} & set(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_setting_is_a_flag_with_its_type_default_and_the_registry_choices():
    actions = {a.dest: a for a in train_parser()._actions if a.option_strings}
    for s in S.SETTINGS:
        action = actions[s.name]
        assert action.option_strings[0] == s.flag and action.default is argparse.SUPPRESS
        assert action.choices == S.choices_of(s)
        if s.type is not bool:
            assert action.type is s.type
    assert actions["method"].choices == tuple(METHODS) and {"simclr", "moco", "byol", "simsiam", "barlow"} <= set(METHODS)
    assert actions["stem"].choices == STEMS and actions["pool"].choices == POOLS
    assert actions["optimizer"].choices == S.OPTIMIZERS and actions["precision"].choices == S.PRECISIONS
    defaults = TrainConfig(data_dir="x")
    for s in S.SETTINGS:  # the config's defaults are the settings' defaults
        assert getattr(defaults, s.name) == s.default, s.name


def test_the_config_is_a_plain_dataclass_with_one_field_per_setting():
    import typing

    assert TrainConfig.__init__.__qualname__ == "TrainConfig.__init__"  # the one @dataclass wrote, not a patch
    fields = list(dataclasses.fields(TrainConfig))
    names = [f.name for f in fields]
    assert names == ["data_dir", *(s.name for s in S.SETTINGS), "hparams", "augment", "explicit"]
    hints = typing.get_type_hints(TrainConfig)
    for f, s in zip(fields[1:], S.SETTINGS):  # same type and default as the setting
        assert f.default == s.default, s.name
        assert hints[s.name] == (s.type if s.default is not None else s.type | None), s.name


def test_ui_settings_and_preset():
    assert [s.name for s in S.ui_settings()] == ["method", "backbone", "init", "teacher", "image_size", "batch_size",
                                                 "minutes", "stem"]
    assert set(S.UI_PRESET) <= {s.name for s in S.SETTINGS}
    assert S.ui_default(S.setting("batch_size")) == 128 and S.ui_default(S.setting("stem")) == S.DEFAULT_STEM
    assert S.ui_default(S.setting("minutes")) == S.UI_PRESET["minutes"]
    with pytest.raises(LookalikeError, match="batch_size"):
        S.setting("batchsize")


# -- what the user gave ------------------------------------------------------------------------------------------
def test_the_flags_typed_are_recorded_even_when_they_equal_the_default(tmp_path):
    cfg = S.config_from_args(parse(str(tmp_path), "--method", "simclr", "--batch-size", "128", "--val", "v"))
    assert cfg.explicit == ("method", "batch_size", "val_dir") and cfg.val_dir == "v"
    assert cfg.given("batch_size") and not cfg.given("image_size")
    bare = S.config_from_args(parse(str(tmp_path), "--init", "scratch"))
    assert bare.explicit == ("init",) and bare == TrainConfig(data_dir=str(tmp_path), init=None)
    assert TrainConfig(data_dir=str(tmp_path), init=S.SCRATCH).init is None  # in code as on the command line
    assert S.config_from_args(parse(str(tmp_path), "--no-channels-last")).channels_last is False
    # a config built in code records the keywords it was given; dataclasses.replace keeps the record
    coded = TrainConfig("x", method="simclr", batch_size=128)
    assert coded.explicit == ("method", "batch_size") and dataclasses.replace(coded, lr=0.1).explicit == coded.explicit


def test_a_run_that_names_no_start_starts_from_the_packaged_pretrained_encoder(tmp_path, monkeypatch):
    from retrieval import pretrained

    installed = pretrained.DEFAULT_SPEC in pretrained.available_pretrained()
    bare = S.config_from_args(parse(str(tmp_path)))
    assert bare.explicit == () and bare.init == (pretrained.DEFAULT_SPEC if installed else None)
    # naming an architecture, a stem, a teacher, a start or a resume leaves the choice to the user
    for argv in (("--backbone", "resnet18"), ("--stem", "small"), ("--init", "scratch"), ("--resume",),
                 ("--method", "distill", "--teacher", "timm:tf_efficientnet_lite2")):
        assert S.config_from_args(parse(str(tmp_path), *argv)).init is None, argv
    assert S.config_from_values(str(tmp_path), {"method": "byol", "minutes": 1}).init == bare.init
    # without the extra: random weights, as before
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(tmp_path / "empty")])
    assert S.config_from_args(parse(str(tmp_path))).init is None
    assert TrainConfig(data_dir=str(tmp_path)).init is None  # a config built in code does what it says


def test_config_from_values_converts_form_values_and_records_them(image_dir):
    cfg = S.config_from_values(str(image_dir), {"method": "byol", "image_size": 32.0, "batch_size": 16.0,
                                                "minutes": 2, "backbone": "  ", "stem": "small"})
    assert (cfg.image_size, cfg.batch_size, cfg.minutes) == (32, 16, 2.0)
    assert type(cfg.image_size) is int and type(cfg.minutes) is float
    assert cfg.backbone == S.DEFAULT_BACKBONE  # an empty text box is "not given"
    assert cfg.explicit == ("method", "image_size", "batch_size", "minutes", "stem")


@pytest.mark.parametrize("values, words", [
    ({"batch_size": 16.5, "minutes": 1}, "Batch size"),
    ({"batch_size": "many", "minutes": 1}, "Batch size"),
    ({"batch_size": 1, "minutes": 1}, "--batch-size"),
    ({"method": "vicreg", "minutes": 1}, "simclr, moco, byol"),
    ({"stem": "tiny", "minutes": 1}, "--stem"),
    ({"minutes": -1}, "--minutes"),
    ({"image_size": 32}, "how long"),
    ({"batch_sise": 16}, "unknown training setting 'batch_sise'"),
])
def test_config_from_values_errors_name_the_setting(image_dir, values, words):
    with pytest.raises(LookalikeError, match=words):
        S.config_from_values(str(image_dir), values)


# -- resume ------------------------------------------------------------------------------------------------------
def test_resume_refuses_a_typed_option_that_contradicts_the_run_even_a_default(tiny_config, tmp_path, image_dir):
    run = train(tiny_config(method="byol"), progress=False)  # batch 16, 1 epoch
    saved = json.loads((run / "encoder.json").read_text())["config"]
    assert saved["explicit"] == ["method"]  # the record travels with the run
    common = (str(image_dir), "--resume", "--out", str(run), "--epochs", "2", "--device", "cpu", "--workers", "0")
    for flag, value, words in (("--method", "simclr", "method='simclr' (the run has 'byol')"),
                               ("--batch-size", "128", "batch_size=128 (the run has 16)")):
        with pytest.raises(LookalikeError, match=re.escape(words)):
            train(S.config_from_args(parse(*common, flag, value)), progress=False)
    # the run's own settings, typed again, and the ones left out are fine: it goes on as the BYOL run it is
    train(S.config_from_args(parse(*common, "--method", "byol", "--precision", "fp32")), progress=False)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["method"] == "byol" and meta["step"] == 8 and meta["config"]["batch_size"] == 16
    assert meta["config"]["explicit"] == ["method", "epochs", "out", "resume", "device", "precision", "workers"]
