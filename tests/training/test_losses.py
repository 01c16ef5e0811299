"""Losses against hand-computed values and slow NumPy references written from the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training import distributed as D
from training.losses import (barlow_twins_loss, byol_loss, center_update, colour_bins, colour_loss, cpc_loss,
                             dino_loss, info_nce, margin_contrastive_loss, masked_mse, mine_negatives, nt_xent,
                             rebalance_weights, simsiam_loss, sinkhorn, swav_loss, triplet_loss)


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
        _new_losses_on_ranks(rank, world)  # defined below, with the losses it checks
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
    z, preds = torch.randn(4, 3, 3, 16, generator=g), torch.randn(2, 4, 3, 3, 16, generator=g)
    cases = [(nt_xent, (a, b, 0.2)), (info_nce, (a, b, queue, 0.2)), (byol_loss, (a, b)),
             (simsiam_loss, (a, b)), (barlow_twins_loss, (a, b)), (margin_contrastive_loss, (a, b, 1.0)),
             (triplet_loss, (a, b, 0.5)), (cpc_loss, (preds, z, 0.2))]
    for fn, args in cases:
        expected = fn(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = [x.bfloat16() if isinstance(x, torch.Tensor) else x for x in args]
            got = fn(*half)
        assert got.dtype == torch.float32, fn.__name__
        # only the bfloat16 rounding of the inputs remains, not bfloat16 arithmetic inside the loss
        assert got.item() == pytest.approx(expected.item(), rel=2e-2), fn.__name__


# -- pairwise losses (margin contrastive, triplet) and their mining ------------------------------------------

def _views_and_distances(z1: np.ndarray, z2: np.ndarray):
    """The 2N unit views [z1; z2], which image each shows, and their Euclidean distances (loops)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    image = [i % (n2 // 2) for i in range(n2)]
    d = [[math.sqrt(max(sum((z[a, c] - z[b, c]) ** 2 for c in range(z.shape[1])), 0.0)) for b in range(n2)]
         for a in range(n2)]
    return image, d


def _mined_reference(d_ap: float, row: list[float], negatives: list[int], mining: str) -> float:
    """FaceNet semi-hard: the closest negative farther than the positive, else the farthest; or the closest."""
    if mining == "hardest":
        return min(row[c] for c in negatives)
    farther = [row[c] for c in negatives if row[c] > d_ap]
    return min(farther) if farther else max(row[c] for c in negatives)


def pairwise_reference(z1: np.ndarray, z2: np.ndarray, margin: float, mining: str, kind: str) -> float:
    """Mean over the 2N anchors of the margin loss y d^2 + (1-y) max(0, m-d)^2 (one similar, one mined dissimilar
    pair) or of the triplet loss max(0, d(a,p) - d(a,n) + margin)."""
    image, d = _views_and_distances(z1, z2)
    n2 = len(image)
    total = 0.0
    for a in range(n2):
        p = (a + n2 // 2) % n2
        negatives = [c for c in range(n2) if image[c] != image[a]]
        d_an = _mined_reference(d[a][p], d[a], negatives, mining)
        if kind == "margin":
            total += 1 * d[a][p] ** 2 + (1 - 0) * max(0.0, margin - d_an) ** 2
        else:
            total += max(0.0, d[a][p] - d_an + margin)
    return total / n2


@pytest.mark.parametrize("mining", ["semihard", "hardest"])
@pytest.mark.parametrize("margin", [0.2, 1.0, 1.9])
def test_pairwise_losses_match_reference(mining, margin):
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * z2  # positives nearer than chance, so some anchors have semi-hard negatives and some not
    for fn, kind in ((margin_contrastive_loss, "margin"), (triplet_loss, "triplet")):
        got = fn(z1, z2, margin, mining).item()
        assert got == pytest.approx(pairwise_reference(z1.numpy(), z2.numpy(), margin, mining, kind), rel=1e-7), kind


def test_pairwise_losses_by_hand():
    e = torch.eye(3, dtype=torch.float64)
    # identical views, the other images orthogonal (distance sqrt 2): positives at 0, every negative at sqrt 2
    assert triplet_loss(e, e, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert triplet_loss(e, e, 2.0).item() == pytest.approx(2.0 - math.sqrt(2), abs=1e-6)
    assert margin_contrastive_loss(e, e, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert margin_contrastive_loss(e, e, 2.0).item() == pytest.approx((2.0 - math.sqrt(2)) ** 2, abs=1e-6)
    # collapse (every embedding equal): the triplet loss is the margin, the margin loss m^2
    one = torch.ones(4, 3, dtype=torch.float64)
    assert triplet_loss(one, one, 0.3, "hardest").item() == pytest.approx(0.3, abs=1e-5)
    assert margin_contrastive_loss(one, one, 1.0).item() == pytest.approx(1.0, abs=1e-5)
    # views of one image opposite: d(a, p) = 2
    assert margin_contrastive_loss(e, -e, 1.0).item() == pytest.approx(4.0, abs=1e-6)


def test_mining_picks_the_stated_negative():
    d_pos = torch.tensor([0.5, 0.5, 0.5])
    d = torch.tensor([[0.0, 0.3, 0.6, 0.9, 0.4],     # negatives 1..4: semi-hard = 0.6 (col 2), hardest 0.3 (col 1)
                      [0.0, 0.1, 0.2, 0.4, 0.45],    # none farther than 0.5: the farthest, 0.45 (col 4)
                      [0.0, 0.3, 0.2, 0.9, 0.7]])    # col 1 masked out below: hardest 0.2 (col 2), semi 0.7
    mask = torch.tensor([[False, True, True, True, True], [False, True, True, True, True],
                         [False, False, True, True, True]])
    assert mine_negatives(d_pos, d, mask, "semihard").tolist() == [2, 4, 4]
    assert mine_negatives(d_pos, d, mask, "hardest").tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="mining"):
        mine_negatives(d_pos, d, mask, "random")
    with pytest.raises(ValueError, match="at least one negative"):
        mine_negatives(d_pos, d, torch.zeros_like(mask), "hardest")


def test_pairwise_losses_validate_and_have_finite_gradients_at_zero_distance():
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    for fn in (margin_contrastive_loss, triplet_loss):
        fn(z, z.detach().clone(), 0.5).backward()  # d(a, p) = 0 exactly
        assert torch.isfinite(z.grad).all()
        z.grad = None
        with pytest.raises(ValueError, match="margin"):
            fn(z, z, 0.0)
        with pytest.raises(ValueError, match="at least one negative"):
            fn(z[:1], z[:1], 0.5)


# -- CPC ------------------------------------------------------------------------------------------------------
def cpc_reference(preds: np.ndarray, z: np.ndarray, t: float) -> float:
    """-log exp(s(p, z_{i+k,j})/t) / sum over every patch c of the batch exp(s(p, z_c)/t), s = cosine, averaged
    over every (k, b, i, j) whose target row i + k is inside the grid."""
    k_steps, n, g = preds.shape[0], z.shape[0], z.shape[1]
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731 - a one-line helper beside its uses
    cands = [unit(z[b, i, j]) for b in range(n) for i in range(g) for j in range(g)]
    total, count = 0.0, 0
    for k in range(1, k_steps + 1):
        for b in range(n):
            for i in range(g - k):
                for j in range(g):
                    p = unit(preds[k - 1, b, i, j])
                    pos = math.exp(p @ unit(z[b, i + k, j]) / t)
                    total += -math.log(pos / sum(math.exp(p @ c / t) for c in cands))
                    count += 1
    return total / count


@pytest.mark.parametrize("steps, t", [(1, 0.1), (2, 0.5), (3, 1.0)])
def test_cpc_loss_matches_reference(steps, t):
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3, 4, 4, 5, generator=g, dtype=torch.float64)
    preds = torch.randn(steps, 3, 4, 4, 5, generator=g, dtype=torch.float64)
    assert cpc_loss(preds, z, t).item() == pytest.approx(cpc_reference(preds.numpy(), z.numpy(), t), rel=1e-9)


def test_cpc_loss_by_hand_and_validation():
    # predictions equal to their targets, all 2x2x... patches orthogonal: -log e^{1/T} / (e^{1/T} + (C - 1))
    z = torch.eye(8, dtype=torch.float64).view(2, 2, 2, 8)  # N=2, G=2: C = 8 candidate patches
    preds = torch.zeros(1, 2, 2, 2, 8, dtype=torch.float64)
    preds[0, :, 0] = z[:, 1]  # row 0 predicts row 1
    assert cpc_loss(preds, z, 0.5).item() == pytest.approx(math.log(1 + 7 * math.exp(-2.0)))
    with pytest.raises(ValueError, match="steps"):
        cpc_loss(torch.zeros(2, 2, 2, 2, 8), z.float(), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        cpc_loss(preds, z, 0.0)
    with pytest.raises(ValueError, match=r"\(K, N, G, G, D\)"):
        cpc_loss(preds[0], z, 0.5)


def test_cpc_gathered_ranks_match_full_batch():
    """Emulate 2 ranks: the mean of the per-rank losses and its gradients equal the single-process ones."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 3, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    preds = torch.randn(2, 4, 3, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    expected = cpc_loss(preds, z, 0.2)
    per_rank = [cpc_loss(preds[:, r * 2:(r + 1) * 2], z[r * 2:(r + 1) * 2], 0.2, z, rank=r) for r in (0, 1)]
    got = sum(per_rank) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(expected, [z, preds]), torch.autograd.grad(got, [z, preds])):
        torch.testing.assert_close(a, b)


def _new_losses_on_ranks(rank: int, world: int) -> None:
    """Run by every rank of test_gather_with_grad_two_processes: the new losses under data parallelism."""
    torch.manual_seed(0)  # the same "global batch" on every rank
    full1, full2 = torch.randn(2 * world, 5, dtype=torch.float64), torch.randn(2 * world, 5, dtype=torch.float64)
    full_z = torch.randn(2 * world, 3, 3, 5, dtype=torch.float64)
    full_p = torch.randn(2, 2 * world, 3, 3, 5, dtype=torch.float64)
    sl = slice(2 * rank, 2 * rank + 2)

    # triplet / margin as the methods call them: every rank computes the loss of the gathered batch
    for fn in (triplet_loss, margin_contrastive_loss):
        z1, z2 = full1[sl].clone().requires_grad_(), full2[sl].clone().requires_grad_()
        loss = fn(D.gather_with_grad(z1), D.gather_with_grad(z2), 0.8, "hardest")
        loss.backward()
        f1, f2 = full1.clone().requires_grad_(), full2.clone().requires_grad_()
        expected = fn(f1, f2, 0.8, "hardest")
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
        torch.testing.assert_close(z1.grad, world * f1.grad[sl])

    # CPC as the method calls it: local predictions against the targets of every rank
    z, p = full_z[sl].clone().requires_grad_(), full_p[:, sl].clone().requires_grad_()
    loss = cpc_loss(p, z, 0.3, D.gather_with_grad(z), rank=rank)
    loss.backward()
    fz, fp = full_z.clone().requires_grad_(), full_p.clone().requires_grad_()
    expected = cpc_loss(fp, fz, 0.3)
    expected.backward()
    assert D.all_reduce_mean(loss.detach()).item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(z.grad, world * fz.grad[sl])
    torch.testing.assert_close(p.grad, world * fp.grad[:, sl])


# -- masked autoencoder and colourisation -------------------------------------------------------------------------
def test_masked_mse_by_hand_counts_only_the_hidden_patches():
    # one image, one channel, 2x2 pixels, 1-px patches: errors 1, 2, 3, 4 (squared 1, 4, 9, 16); patches 0 and 3 hidden
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    assert masked_mse(pred, target, mask, 1).item() == pytest.approx((1 + 16) / 2)
    # 2-px patch, 2 channels: the patch's 8 values; target standardised per patch (norm_pix): mean 0.5, std 0.5
    pred = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    assert masked_mse(pred, target, one, 2).item() == pytest.approx(0.5)  # mean of 4 zeros and 4 ones
    assert masked_mse(pred, target, one, 2, norm_pix=True).item() == pytest.approx(1.0, abs=1e-5)  # (+-1)^2
    # nothing hidden: zero, not a division by zero
    assert masked_mse(pred, target, torch.zeros_like(one), 2).item() == 0.0


def test_colour_bins_and_rebalancing_by_hand():
    # bins = 4 over [-0.5, 0.5]: intervals [-0.5, -0.25), [-0.25, 0), [0, 0.25), [0.25, 0.5]; class = a * 4 + b
    chroma = torch.tensor([-0.5, 0.49, -0.1, 0.1, 0.0, 0.3, 9.0, -9.0], dtype=torch.float64).view(4, 2, 1, 1)
    assert colour_bins(chroma, 4, 0.5).flatten().tolist() == [0 * 4 + 3, 1 * 4 + 2, 2 * 4 + 3, 3 * 4 + 0]
    # w ~ 1 / ((1 - lam) p + lam / Q), scaled so that sum p w = 1: p = (1, 0), lam = 0.5 -> (4/3, 4) -> (1, 3)
    w = rebalance_weights(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5)
    assert w.tolist() == pytest.approx([1.0, 3.0])
    assert rebalance_weights(torch.full((5,), 0.2, dtype=torch.float64)).tolist() == pytest.approx([1.0] * 5)


def test_colour_loss_matches_a_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64).T.reshape(1, 2, 1, 2)  # 2 pixels, Q = 2
    target = torch.tensor([[[0, 0]]])
    ce = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))]  # -log softmax at class 0, each pixel
    assert colour_loss(logits, target).item() == pytest.approx(sum(ce) / 2)
    weights = torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert colour_loss(logits, target, weights).item() == pytest.approx(3 * sum(ce) / 2)


# -- SwAV ---------------------------------------------------------------------------------------------------------
def sinkhorn_reference(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Sinkhorn-Knopp written out with loops: rows of Q = exp(S/eps)^T to 1/K, columns to 1/B, return B Q^T."""
    q = np.exp(scores.astype(np.float64) / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(b):
            q[:, c] /= q[:, c].sum() * b
    return b * q.T


def test_sinkhorn_matches_reference_and_marginals():
    s = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = sinkhorn(s, eps=0.5, iters=3)
    np.testing.assert_allclose(q.numpy(), sinkhorn_reference(s.numpy(), 0.5, 3), rtol=1e-10)
    assert torch.allclose(q.sum(dim=1), torch.ones(6, dtype=torch.float64))  # every sample: one unit of mass
    converged = sinkhorn(s, eps=0.5, iters=200)
    assert torch.allclose(converged.sum(dim=0), torch.full((4,), 6 / 4, dtype=torch.float64), atol=1e-8)  # B / K
    # a uniform input gives the uniform assignment; one cluster's lead cannot take the whole batch
    uniform = sinkhorn(torch.zeros(5, 3, dtype=torch.float64))
    assert torch.allclose(uniform, torch.full((5, 3), 1 / 3, dtype=torch.float64))
    biased = torch.zeros(4, 2, dtype=torch.float64)
    biased[:, 0] = 0.1  # everyone prefers prototype 0 a little
    balanced = sinkhorn(biased, eps=0.05, iters=100).sum(dim=0)
    assert torch.allclose(balanced, torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_swav_loss_by_hand():
    # two views, K = 2, B = 1: the code of view 0 is (1, 0), of view 1 (0.5, 0.5); T = 1
    s0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    s1 = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # softmax (3/4, 1/4)
    codes = [torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.5, 0.5]], dtype=torch.float64)]
    # pair (0 -> 1): -log 3/4; pair (1 -> 0): -(0.5 log 1/2 + 0.5 log 1/2) = log 2
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert swav_loss([s0, s1], codes, temperature=1.0).item() == pytest.approx(expected)
    # a local view (no code) is predicted from both codes: 3 pairs
    s2 = torch.zeros(1, 2, dtype=torch.float64)
    expected3 = (-math.log(0.75) + math.log(2.0) + math.log(2.0) + math.log(2.0)) / 4
    assert swav_loss([s0, s1, s2], codes, temperature=1.0).item() == pytest.approx(expected3)


# -- DINO ---------------------------------------------------------------------------------------------------------
def dino_reference(student, teacher, center, ts, tt) -> float:
    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            total += np.mean([-(softmax((t[b] - center) / tt) * np.log(softmax(s[b] / ts))).sum()
                              for b in range(len(t))])
            pairs += 1
    return total / pairs


def test_dino_loss_matches_reference_centring_and_sharpening():
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(5, generator=g, dtype=torch.float64)
    got = dino_loss(student, teacher, center, 0.1, 0.04).item()
    ref = dino_reference([s.numpy() for s in student], [t.numpy() for t in teacher], center.numpy(), 0.1, 0.04)
    assert got == pytest.approx(ref, rel=1e-10)
    # centring removes a constant offset of the teacher's outputs once the centre has it
    offset = torch.randn(5, generator=g, dtype=torch.float64)
    shifted = dino_loss(student, [t + offset for t in teacher], center + offset, 0.1, 0.04).item()
    assert shifted == pytest.approx(got, rel=1e-10)
    # by hand: K = 2, teacher (0, 0) and centre 0 -> P_t = (1/2, 1/2); student (log 3, 0) -> (3/4, 1/4)
    s = [torch.tensor([[0.0, 0.0]], dtype=torch.float64), torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)]
    t = [torch.zeros(1, 2, dtype=torch.float64)]
    assert dino_loss(s, t, torch.zeros(2, dtype=torch.float64), 1.0, 1.0).item() == pytest.approx(
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)))
    # sharpening: a lower teacher temperature puts more mass on the teacher's top output
    sharp = torch.softmax(torch.tensor([1.0, 0.0]) / 0.04, 0)
    assert sharp[0] > 0.99


def test_center_update_by_hand():
    c = torch.tensor([[0.0, 1.0]])
    assert center_update(c, torch.tensor([1.0, 1.0]), 0.9)[0].tolist() == pytest.approx([0.1, 1.0])
    assert center_update(c, torch.tensor([3.0, -1.0]), 0.5)[0].tolist() == pytest.approx([1.5, 0.0])
