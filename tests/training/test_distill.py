"""Distillation (``--method distill --teacher SPEC``): the student learns the frozen teacher's embedding; the
teacher is never trained, never in the optimiser or the checkpoint (the run records its spec and digest), and a
resumed run refuses a teacher whose weights changed; the student run indexes and searches."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from retrieval.encoders import build_backbone, feature_dim, load_encoder, sha256_file
from retrieval.errors import LookalikeError
from retrieval.init_weights import load_init
from retrieval.workspace import Workspace
from tests.retrieval.test_encoder_safety import write_run
from training.checkpoint import load_state
from training.methods import build_method
from training.optim import make_optimizer


@pytest.fixture
def teacher_run(tmp_path):
    """A small-stem resnet10t teacher for 32 px, with its own normalisation; seeded weights."""
    torch.manual_seed(1)
    run, _ = write_run(tmp_path / "teacher", mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic")
    return run


def test_the_student_learns_the_frozen_teacher_which_stays_out_of_state_and_optimiser(teacher_run, tmp_path):
    grid, _ = write_run(tmp_path / "grid-teacher", pool="grid", dim=256 * 16)  # 4,096 wide: a projection is needed
    teacher = load_init(str(grid))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    torch.manual_seed(0)
    student = build_backbone("resnet10t")
    method = build_method("distill", student, feature_dim(student), teacher=teacher, image_size=16).train()
    assert isinstance(method.projector, torch.nn.Linear) and method.projector.out_features == 256 * 16
    seen = {}
    for name, net in (("student", method.backbone.conv1), ("teacher", method.teacher.conv1)):  # first layers
        net.register_forward_pre_hook(lambda m, args, name=name: seen.update({name: tuple(args[0].shape)}))
    optimizer = make_optimizer("adamw", method.param_groups(1e-4), 1e-3)
    x1, x2 = torch.randn(8, 3, 24, 24), torch.randn(8, 3, 24, 24)  # each network gets them at its own size
    losses = []
    for _ in range(12):
        loss = method(x1, x2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert seen == {"student": (16, 3, 16, 16), "teacher": (16, 3, 32, 32)}  # both views, one pass each
    assert not method.teacher.training and not any(p.requires_grad for p in method.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in method.teacher.state_dict().items())  # running stats too
    in_optimiser = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimiser == {id(p) for p in method.parameters()}
    assert not in_optimiser & {id(p) for p in method.teacher.parameters()}
    assert all(k.startswith(("backbone.", "projector.")) for k in method.state_dict())


def test_teacher_only_with_distill():
    from training.finetune import resolve_sources
    from training.trainer import TrainConfig

    with pytest.raises(LookalikeError, match="--method distill needs --teacher"):
        resolve_sources(TrainConfig(data_dir=".", method="distill", epochs=1))
    with pytest.raises(LookalikeError, match="--teacher is for --method distill"):
        resolve_sources(TrainConfig(data_dir=".", method="simclr", teacher="timm:tf_efficientnet_lite0", epochs=1))


def test_distilled_run_records_its_teacher_indexes_searches_and_refuses_a_changed_teacher(tiny_config, teacher_run,
                                                                                          image_dir, tmp_path):
    from training.trainer import train

    run = train(tiny_config(method="distill", teacher=str(teacher_run), batch_size=16, keep_best=False), progress=False)
    assert {p.name for p in run.iterdir()} == {"encoder.safetensors", "encoder.json", "state.pt", "metrics.jsonl"}
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(v) and v >= 0 for v in losses)
    meta = json.loads((run / "encoder.json").read_text())
    # the default student: the teacher's architecture and weights at half its input size, its normalisation
    assert (meta["method"], meta["backbone"], meta["stem"], meta["image_size"]) == ("distill", "resnet10t", "small", 16)
    assert meta["mean"] == [0.5] * 3 and meta["interpolation"] == "bicubic" and meta["step"] == 4
    digest = sha256_file(teacher_run / "encoder.safetensors")
    assert meta["teacher"]["weights"] == digest and meta["init"]["weights"] == digest
    assert meta["config"]["teacher"] == str(teacher_run)
    state = load_state(run)
    assert all(k.startswith("backbone.") for k in state["method"])  # same widths: no projector; no teacher
    n_student = len(list(build_backbone("resnet10t", stem="small").parameters()))
    assert len(state["optimizer"]["state"]) == n_student
    assert state["sources"]["teacher"]["weights"] == digest
    assert not torch.equal(load_file(str(run / "encoder.safetensors"))["conv1.0.weight"],
                           load_file(str(teacher_run / "encoder.safetensors"))["conv1.0.weight"])

    ws = Workspace(tmp_path / "indexes")
    ws.build(image_dir, str(run), "shapes", progress=False)
    query = next(image_dir.rglob("*.png"))
    hits = ws.search("shapes", query, k=3)
    assert len(hits) == 3 and hits[0].path == str(query.relative_to(image_dir)) and hits[0].score > 0.99
    assert load_encoder(str(run)).image_size == 16

    weights = {k: v + 0.01 if v.is_floating_point() else v
               for k, v in load_file(str(teacher_run / "encoder.safetensors")).items()}
    save_file(weights, str(teacher_run / "encoder.safetensors"))
    teacher_meta = json.loads((teacher_run / "encoder.json").read_text())
    teacher_meta["weights_sha256"] = sha256_file(teacher_run / "encoder.safetensors")
    (teacher_run / "encoder.json").write_text(json.dumps(teacher_meta))
    with pytest.raises(LookalikeError, match="teacher .* has other weights"):
        train(tiny_config(epochs=2, resume=True), progress=False)
