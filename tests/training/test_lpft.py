"""LP-FT: during the head warm-up of a fine-tune the backbone's parameters do not move (no update, no weight
decay) while the heads train; afterwards the backbone trains too."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from retrieval.encoders import build_backbone, feature_dim
from tests.retrieval.test_encoder_safety import write_run
from training.lpft import HeadWarmup
from training.methods import build_method
from training.optim import make_optimizer
from training.trainer import train


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _moved(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_the_backbone_is_frozen_during_the_warmup_then_trains():
    torch.manual_seed(0)
    backbone = build_backbone("resnet10t")
    method = build_method("simclr", backbone, feature_dim(backbone)).train()
    opt = make_optimizer("adamw", method.param_groups(weight_decay=0.1), lr=1e-2)
    warmup = HeadWarmup(method.backbone, until=0.5)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)

    def step(progress: float) -> None:
        warmup(progress)
        opt.zero_grad(set_to_none=True)
        method(x1, x2).backward()
        opt.step()

    weights = {k: v for k, v in _snapshot(method.backbone).items() if "running" not in k and "num_batches" not in k}
    heads = _snapshot(method.projector)
    step(0.0)
    step(0.4)
    assert warmup.frozen
    assert all(torch.equal(weights[n], p) for n, p in method.backbone.named_parameters())  # decay included
    assert _moved(heads, method.projector)
    step(0.5)
    assert not warmup.frozen and all(p.requires_grad for p in method.backbone.parameters())
    assert any(not torch.equal(weights[n], p) for n, p in method.backbone.named_parameters())


def test_the_trainer_warms_the_heads_of_a_finetune_first(tiny_config, tmp_path):
    init, _ = write_run(tmp_path / "start")  # its BatchNorm statistics are frozen in a fine-tune by default
    start = load_file(str(init / "encoder.safetensors"))
    # 4 steps at progress 0, 0.25, 0.5, 0.75: all inside a warm-up of 0.99 of the run
    run = train(tiny_config(init=str(init), batch_size=16, head_warmup=0.99, keep_best=False), progress=False)
    frozen = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(start[k], frozen[k]) for k in start)
    run = train(tiny_config(init=str(init), batch_size=16, head_warmup=0.5, keep_best=False,
                            out=str(tmp_path / "half")), progress=False)
    half = load_file(str(run / "encoder.safetensors"))
    assert any(not torch.equal(start[k], half[k]) for k in start)
