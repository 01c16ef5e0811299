"""Losses against hand-computed values and slow NumPy references written from the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training import distributed as D
from training.losses import barlow_twins_loss, byol_loss, info_nce, nt_xent, simsiam_loss


# -- slow references ------------------------------------------------------------------------------------------
def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """SimCLR eq. 1, looping over the 2N anchors: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / n2


def info_nce_reference(q: np.ndarray, k: np.ndarray, queue: np.ndarray, t: float) -> float:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(q[i] @ k[i] / t)
        neg = sum(math.exp(q[i] @ queue[j] / t) for j in range(len(queue)))
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def barlow_reference(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / z1.std(0)  # population std, like BatchNorm in training mode
    b = (z2 - z2.mean(0)) / z2.std(0)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[s, i] * b[s, j] for s in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


# -- NT-Xent --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.1, 0.2, 0.5, 1.0])
def test_nt_xent_matches_reference(t):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    got = nt_xent(z1, z2, t).item()
    assert got == pytest.approx(nt_xent_reference(z1.numpy(), z2.numpy(), t), rel=1e-9)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_by_hand(t):
    e = torch.eye(4, dtype=torch.float64)
    # two images whose views coincide: positive sim 1, the two other views sim 0
    assert nt_xent(e[:2], e[:2], t).item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)))
    # all four views orthogonal: every logit 0, so the loss is log(2N - 1)
    assert nt_xent(e[:2], e[2:], t).item() == pytest.approx(math.log(3))
    # scale does not matter (cosine similarity)
    assert nt_xent(3 * e[:2], 0.5 * e[:2], t).item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)))


def test_nt_xent_gathered_ranks_match_full_batch():
    """Emulate 2 ranks: the mean of the per-rank losses and the gradients equal the single-process loss."""
    g = torch.Generator().manual_seed(0)
    full1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    full2 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    expected = nt_xent(full1, full2, 0.3)
    per_rank = [nt_xent(full1[r * 3:(r + 1) * 3], full2[r * 3:(r + 1) * 3], 0.3, full1, full2, rank=r) for r in (0, 1)]
    assert (sum(per_rank) / 2).item() == pytest.approx(expected.item(), rel=1e-12)
    g_exp = torch.autograd.grad(expected, [full1, full2])
    g_got = torch.autograd.grad(sum(per_rank) / 2, [full1, full2])
    for a, b in zip(g_exp, g_got):
        torch.testing.assert_close(a, b)


def test_nt_xent_validates():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, torch.randn(3, 5), 0.5)
    with pytest.raises(ValueError, match="both"):
        nt_xent(z, z, 0.5, z1_all=z)


# -- InfoNCE --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_reference(t):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=1)
    assert info_nce(q, k, queue, t).item() == pytest.approx(info_nce_reference(q.numpy(), k.numpy(), queue.numpy(), t))


def test_info_nce_by_hand():
    e = torch.eye(5, dtype=torch.float64)
    # q = k, the 3 queued keys orthogonal to q: -log(e^{1/T} / (e^{1/T} + 3))
    t = 0.2
    assert info_nce(e[:2], e[:2], e[2:], t).item() == pytest.approx(math.log(1 + 3 * math.exp(-1 / t)))


def test_info_nce_key_and_queue_get_no_gradient():
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4, requires_grad=True)
    queue = torch.nn.functional.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    info_nce(q, k, queue, 0.2).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


# -- BYOL / SimSiam -------------------------------------------------------------------------------------------
def test_byol_loss_identical_and_opposite():
    p = torch.randn(4, 8)
    assert byol_loss(p, 2.5 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    e = torch.eye(2)
    assert byol_loss(e, e.flip(0)).item() == pytest.approx(2.0)  # orthogonal: 2 - 2*0


def test_simsiam_loss_values_and_stop_gradient():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    assert simsiam_loss(p.detach(), p.detach()).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(p.detach(), -p.detach()).item() == pytest.approx(1.0, abs=1e-6)
    simsiam_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    z2 = torch.randn(4, 8, requires_grad=True)
    byol_loss(p, z2).backward()
    assert z2.grad is None


# -- Barlow Twins ---------------------------------------------------------------------------------------------
def test_barlow_identity_correlation_is_zero():
    # columns with zero mean, unit variance and mutually orthogonal -> C = I exactly
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    z = h[:, 1:]  # (N=4, D=3)
    assert barlow_twins_loss(z, z, lambd=5e-3, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    # z2 = -z: C = -I -> on-diagonal (1 - (-1))^2 = 4 per dimension
    assert barlow_twins_loss(z, -z, eps=0.0).item() == pytest.approx(12.0)


@pytest.mark.parametrize("lambd", [0.0, 5e-3, 1.0])
def test_barlow_matches_reference(lambd):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    got = barlow_twins_loss(z1, z2, lambd, eps=0.0).item()
    assert got == pytest.approx(barlow_reference(z1.numpy(), z2.numpy(), lambd), rel=1e-9)
    assert barlow_twins_loss(z1, z2, lambd, scale=0.5, eps=0.0).item() == pytest.approx(got / 2, rel=1e-12)


# -- distributed helpers --------------------------------------------------------------------------------------
def test_distributed_helpers_are_identity_in_one_process():
    assert not D.is_dist() and D.rank() == 0 and D.world_size() == 1
    t = torch.randn(3, 2, requires_grad=True)
    assert D.gather_with_grad(t) is t
    g = D.gather_no_grad(t)
    assert torch.equal(g, t) and not g.requires_grad
    m = D.all_reduce_mean(t)
    assert torch.equal(m, t) and m.data_ptr() != t.data_ptr()


def _ddp_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same "global batch" on every rank
        full1, full2 = torch.randn(2 * world, 5, dtype=torch.float64), torch.randn(2 * world, 5, dtype=torch.float64)
        sl = slice(2 * rank, 2 * rank + 2)
        z1, z2 = full1[sl].clone().requires_grad_(), full2[sl].clone().requires_grad_()

        # gathers: rank order, identical on all ranks
        torch.testing.assert_close(D.gather_no_grad(z1), full1)
        assert D.all_reduce_mean(torch.tensor([float(rank)])).item() == pytest.approx((world - 1) / 2)

        # NT-Xent with gathered negatives: gradient = world * d(full-batch loss)/d(local slice), so that
        # DDP's averaging over ranks yields the single-process gradient
        loss = nt_xent(z1, z2, 0.5, D.gather_with_grad(z1), D.gather_with_grad(z2), rank=rank)
        loss.backward()
        f1, f2 = full1.clone().requires_grad_(), full2.clone().requires_grad_()
        expected = nt_xent(f1, f2, 0.5)
        expected.backward()
        mean_loss = D.all_reduce_mean(loss.detach())
        assert mean_loss.item() == pytest.approx(expected.item(), rel=1e-9)
        torch.testing.assert_close(z1.grad, world * f1.grad[sl])
        torch.testing.assert_close(z2.grad, world * f2.grad[sl])

        # Barlow Twins on the gathered batch: every rank computes the full-batch loss
        b1, b2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
        bt = barlow_twins_loss(D.gather_with_grad(b1), D.gather_with_grad(b2))
        f1, f2 = full1.clone().requires_grad_(), full2.clone().requires_grad_()
        bt_full = barlow_twins_loss(f1, f2)
        assert bt.item() == pytest.approx(bt_full.item(), rel=1e-9)
        bt.backward()
        bt_full.backward()
        torch.testing.assert_close(b1.grad, world * f1.grad[sl])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two interpreters (a few seconds, mostly importing torch)
def test_gather_with_grad_two_processes(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous")), nprocs=2, join=True)


def test_losses_run_in_float32_under_autocast():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(10, 16, generator=g), dim=1)
    cases = [(nt_xent, (a, b, 0.2)), (info_nce, (a, b, queue, 0.2)), (byol_loss, (a, b)),
             (simsiam_loss, (a, b)), (barlow_twins_loss, (a, b))]
    for fn, args in cases:
        expected = fn(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = [x.bfloat16() if isinstance(x, torch.Tensor) else x for x in args]
            got = fn(*half)
        assert got.dtype == torch.float32, fn.__name__
        # only the bfloat16 rounding of the inputs remains, not bfloat16 arithmetic inside the loss
        assert got.item() == pytest.approx(expected.item(), rel=2e-2), fn.__name__
