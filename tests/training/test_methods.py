"""SSL methods on a tiny backbone: finite losses, gradients, momentum/EMA updates, queue, checkpointable state."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError
from training.methods import METHODS, SSLMethod, build_method
from training.methods.base import ProjectionHead, cosine_momentum

from .conftest import tiny_backbone

# the methods this file covers (tests/training/test_new_methods.py covers the others), with small heads so each
# test runs in milliseconds
SMALL = {
    "simclr": dict(hidden_dim=32, out_dim=16),
    "moco": dict(hidden_dim=32, out_dim=16, K=20),
    "byol": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32),
    "simsiam": dict(dim=32, pred_hidden_dim=8),
    "barlow": dict(dim=32),
}



def make(name: str, **overrides) -> SSLMethod:
    torch.manual_seed(0)
    return build_method(name, tiny_backbone(), 16, **{**SMALL[name], **overrides})


def views(b=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 3, size, size, generator=g)


def frozen_copy(method: SSLMethod) -> nn.Module | None:
    return getattr(method, "encoder_k", None) or getattr(method, "target", None)


# -- every method ---------------------------------------------------------------------------------------------
def test_registry():
    assert list(METHODS)[:5] == ["simclr", "moco", "byol", "simsiam", "barlow"]
    for name, cls in METHODS.items():
        assert cls.name == name and issubclass(cls, SSLMethod)
        assert isinstance(cls.needs_sync_bn, bool) and isinstance(cls.default_hparams, dict)
    assert METHODS["moco"].needs_sync_bn is False  # shuffle-BN within the process instead
    with pytest.raises(LookalikeError, match="simclr, moco, byol, simsiam, barlow"):
        build_method("vicreg", tiny_backbone(), 16)
    with pytest.raises(LookalikeError, match="temprature"):
        build_method("simclr", tiny_backbone(), 16, temprature=0.1)


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_gives_finite_loss_and_backbone_gradient(name):
    m = make(name)
    x1, x2 = views()
    loss = m(x1, x2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for p in m.backbone.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    frozen = frozen_copy(m)
    if frozen is not None:  # the momentum / EMA copy is never trained by gradient
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


@pytest.mark.parametrize("name", list(SMALL))
def test_param_groups_hold_exactly_the_trainable_parameters(name):
    m = make(name)
    groups = m.param_groups(weight_decay=0.1)
    in_groups = [p for g in groups for p in g["params"]]
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)
    assert {id(p) for p in in_groups} == {id(p) for p in trainable}
    frozen = frozen_copy(m)
    if frozen is not None:
        assert not {id(p) for p in frozen.parameters()} & {id(p) for p in in_groups}
    for g in groups:  # 1-D parameters (biases, norm scales) are not decayed
        assert g["weight_decay"] == (0.0 if all(p.dim() <= 1 for p in g["params"]) else 0.1)
        assert g["fixed_lr"] == (name == "simsiam" and any(p is q for p in g["params"] for q in m.predictor.parameters()))
    torch.optim.AdamW(groups, lr=1e-3)  # accepted by a torch optimiser as is


@pytest.mark.parametrize("name", list(SMALL))
def test_state_dict_round_trip_with_weights_only(name):
    m = make(name)
    m(*views())
    m.after_step(0.5)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = make(name)
    fresh.load_state_dict(state)
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert any(k.startswith("backbone.") for k in state)


def test_backbone_is_the_module_passed_in():
    bb = tiny_backbone()
    m = build_method("byol", bb, 16, **SMALL["byol"])
    assert m.backbone is bb
    assert m.target[0] is not bb  # the target is a copy, not the same module
    m.eval()
    with torch.no_grad():  # the copy starts equal to the online network
        x = views()[0]
        torch.testing.assert_close(m.target(x), m.projector(bb(x)))


def test_real_timm_backbone_smoke():
    timm = pytest.importorskip("timm")
    bb = timm.create_model("resnet10t", num_classes=0)
    m = build_method("simclr", bb, bb.num_features, hidden_dim=32, out_dim=16)
    loss = m(*views(b=4, size=32))
    loss.backward()
    assert torch.isfinite(loss) and bb.conv1[0].weight.grad is not None


# -- momentum / EMA -------------------------------------------------------------------------------------------
def test_cosine_momentum_schedule():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    assert cosine_momentum(0.99, 0.25) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(0.99, 2.0) == pytest.approx(1.0)  # clamped


def _perturb_online(m: SSLMethod) -> None:
    """Make the online network differ from its copy, as an optimiser step would."""
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_byol_target_follows_ema_with_cosine_tau(progress):
    m = make("byol", tau0=0.9)
    _perturb_online(m)
    online = list(nn.Sequential(m.backbone, m.projector).parameters())
    before = [p.detach().clone() for p in m.target.parameters()]
    m.after_step(progress)
    tau = 1 - (1 - 0.9) * (math.cos(math.pi * progress) + 1) / 2
    assert m.tau == pytest.approx(tau)
    for xi, xi0, theta in zip(m.target.parameters(), before, online):
        torch.testing.assert_close(xi, tau * xi0 + (1 - tau) * theta)
    if progress < 1.0:
        assert any(not torch.equal(xi, xi0) for xi, xi0 in zip(m.target.parameters(), before))


def test_moco_key_encoder_momentum_update():
    m = make("moco", m=0.75)
    _perturb_online(m)
    online = list(nn.Sequential(m.backbone, m.projector).parameters())
    before = [p.detach().clone() for p in m.encoder_k.parameters()]
    m.after_step(0.5)
    for pk, pk0, pq in zip(m.encoder_k.parameters(), before, online):
        torch.testing.assert_close(pk, 0.75 * pk0 + 0.25 * pq)


# -- MoCo queue -----------------------------------------------------------------------------------------------
def test_moco_queue_pointer_and_content_wrap_around():
    m = make("moco", K=20)  # 20 is not a multiple of the batch of 8: the pointer wraps
    assert m.queue.shape == (20, 16) and int(m.queue_ptr) == 0
    torch.testing.assert_close(m.queue.norm(dim=1), torch.ones(20))
    keys = []
    for step in range(3):
        x1, x2 = views(seed=step)
        m(x1, x2)
        with torch.no_grad():  # batch of 8 -> one BN split, so the keys can be recomputed exactly
            keys.append(F.normalize(m.encoder_k(x2), dim=1))
        assert int(m.queue_ptr) == [8, 16, 4][step]
    torch.testing.assert_close(m.queue[4:8], keys[0][4:8])  # survived: rows 4..7 of step 0
    torch.testing.assert_close(m.queue[8:16], keys[1])
    torch.testing.assert_close(m.queue[16:20], keys[2][:4])
    torch.testing.assert_close(m.queue[0:4], keys[2][4:])  # wrapped around
    state = m.state_dict()
    assert "queue" in state and "queue_ptr" in state and any(k.startswith("encoder_k.") for k in state)


def test_moco_eval_forward_does_not_enqueue():
    m = make("moco").eval()
    q0 = m.queue.clone()
    with torch.no_grad():
        m(*views())
    assert torch.equal(m.queue, q0) and int(m.queue_ptr) == 0


def test_moco_shuffled_split_keys_line_up_with_their_images():
    # in eval mode BN uses running statistics, so the shuffled, chunked key pass must equal a plain pass
    m = make("moco", bn_splits=4).eval()
    x = views(b=32)[0]
    assert m._splits(32) == 4 and m._splits(8) == 1
    with torch.no_grad():
        torch.testing.assert_close(m.encode_k(x), F.normalize(m.encoder_k(x), dim=1))
        torch.testing.assert_close(m.encode_q(x), F.normalize(m.projector(m.backbone(x)), dim=1))


def test_moco_batch_larger_than_queue():
    # 8 keys into a queue of 5: only the newest 5 are kept, each written once, in order from the pointer on
    for start in (0, 3):
        m = make("moco", K=5)
        m.queue_ptr.fill_(start)
        x1, x2 = views(b=8)
        m(x1, x2)
        with torch.no_grad():  # batch of 8 -> one BN split, so the keys can be recomputed exactly
            keys = F.normalize(m.encoder_k(x2), dim=1)
        rows = [(start + i) % 5 for i in range(5)]
        torch.testing.assert_close(m.queue[rows], keys[3:])
        assert int(m.queue_ptr) == start  # advanced by the 5 keys written: once round the queue


# -- no-gradient targets ---------------------------------------------------------------------------------------
class ConstantPredictor(nn.Module):
    """A predictor whose output ignores its input: the loss then reaches the backbone only if the target branch
    (the stop-gradient side) lets gradient through."""

    def __init__(self, dim: int):
        super().__init__()
        self.p = nn.Parameter(torch.randn(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.p.expand_as(z)


def test_simsiam_stop_gradient_branch():
    encoder_grads = lambda m: [p.grad for p in [*m.backbone.parameters(), *m.projector.parameters()]]  # noqa: E731 - a one-line helper beside its uses
    m = make("simsiam")
    m.predictor = ConstantPredictor(SMALL["simsiam"]["dim"])
    m(*views()).backward()  # SimSiam.forward: 0.5 * D(p1, sg(z2)) + 0.5 * D(p2, sg(z1))
    assert m.predictor.p.grad is not None and torch.count_nonzero(m.predictor.p.grad) > 0
    assert all(g is None or torch.count_nonzero(g) == 0 for g in encoder_grads(m)), \
        "gradient reached the encoder through the target branch: the stop-gradient is missing"
    m = make("simsiam")  # with the real predictor the gradient does reach the encoder, through p = pred(z)
    m(*views()).backward()
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in encoder_grads(m))


def test_projection_head_builder():
    head = ProjectionHead([(16, 32, True, True), (32, 8, nn.BatchNorm1d(8, affine=False), False)])
    kinds = [type(mod).__name__ for mod in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert head.layers[0].bias is None  # followed by BN
    assert head(torch.randn(4, 16)).shape == (4, 8) and head.out_dim == 8
    with pytest.raises(ValueError, match="previous layer"):
        ProjectionHead([(16, 32, True, True), (31, 8, False, False)])
