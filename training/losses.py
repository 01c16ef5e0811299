"""Self-supervised losses as pure functions (no state, no distributed calls).

Shapes: N = local batch, D = embedding dim, W = world size, M = W*N = global batch, K = MoCo queue length.
Where a method needs negatives from other ranks it gathers them itself (``training.distributed``) and passes
the gathered tensors in; the functions here never talk to other processes.

References
- NT-Xent: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), 2020.
- InfoNCE with a queue: He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020;
  Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020.
- BYOL: Grill et al., "Bootstrap Your Own Latent", 2020.
- SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", 2021.
- Barlow Twins: Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", 2021.
- Margin contrastive loss: Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
  Mapping", 2006.
- Triplet loss and semi-hard mining: Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
  Clustering", 2015; hardest-in-batch mining: Hermans et al., "In Defense of the Triplet Loss", 2017.
- CPC: van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018; Hénaff et al.,
  "Data-Efficient Image Recognition with Contrastive Predictive Coding" (CPC v2), 2020.
- Masked autoencoder: He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022.
- Colourisation: Zhang, Isola & Efros, "Colorful Image Colorization", 2016.
- SwAV and Sinkhorn-Knopp: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
  Assignments", 2020; Cuturi, "Sinkhorn Distances", 2013.
- DINO: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "info_nce", "byol_loss", "simsiam_loss", "barlow_twins_loss", "MINING", "two_view_distances",
           "mine_negatives", "margin_contrastive_loss", "triplet_loss", "cpc_loss", "masked_mse", "colour_bins",
           "rebalance_weights", "colour_loss", "sinkhorn", "swav_loss", "dino_loss", "center_update"]

_F = TypeVar("_F", bound=Callable[..., torch.Tensor])
_HALF = (torch.float16, torch.bfloat16)


def _full_precision(fn: _F) -> _F:
    """Run a loss in float32 even inside ``torch.autocast``: half-precision inputs are upcast and autocast is
    switched off for the loss's own matrix products (similarities divided by a small temperature, or a D x D
    cross-correlation summed over D^2 terms, lose too much in bfloat16). float64 inputs stay float64."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        def up(a):
            return a.float() if isinstance(a, torch.Tensor) and a.dtype in _HALF else a

        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        if tensors and torch.is_autocast_enabled(tensors[0].device.type):
            with torch.autocast(tensors[0].device.type, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must be 2-D tensors of the same shape (N, D); got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


@_full_precision
def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy over 2N views (SimCLR, eq. 1).

    For each of the 2N local views, the positive is the other view of the same image and the negatives are all
    other 2M - 2 views of the (global) batch. The loss is the mean over the 2N local anchors of
    ``-log exp(sim(i, j)/T) / sum_{k != i} exp(sim(i, k)/T)`` with ``sim`` the cosine similarity.

    Args:
        z1, z2: (N, D) projections of view 1 and view 2 of the same N images (normalised here; need not be).
        temperature: T > 0.
        z1_all, z2_all: (M, D) the same projections gathered from all ranks in rank order (with gradient, see
            ``training.distributed.gather_with_grad``); ``None`` means single process (M = N, z*_all = z*).
        rank: this process's rank; its rows are ``z*_all[rank*N : (rank+1)*N]``.
    """
    _check_pair(z1, z2, "z1 and z2")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (z1_all is None) != (z2_all is None):
        raise ValueError("pass both z1_all and z2_all (gathered from all ranks) or neither")
    n = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if z1_all is None:
        z1_all, z2_all, offset = z1, z2, 0
    else:
        _check_pair(z1_all, z2_all, "z1_all and z2_all")
        z1_all, z2_all = F.normalize(z1_all, dim=1), F.normalize(z2_all, dim=1)
        offset = rank * n
        if offset + n > z1_all.shape[0]:
            raise ValueError(f"rank {rank} with local batch {n} does not fit in gathered batch {z1_all.shape[0]}")
    m = z1_all.shape[0]

    anchors = torch.cat([z1, z2], dim=0)  # (2N, D)
    candidates = torch.cat([z1_all, z2_all], dim=0)  # (2M, D): [view1 of all images, view2 of all images]
    logits = anchors @ candidates.T / temperature  # (2N, 2M)

    local = torch.arange(n, device=z1.device) + offset  # (N,) global image index of each local anchor
    self_idx = torch.cat([local, local + m])  # (2N,) column of each anchor itself
    pos_idx = torch.cat([local + m, local])  # (2N,) column of its other view
    is_self = torch.zeros_like(logits, dtype=torch.bool)  # (2N, 2M)
    is_self[torch.arange(2 * n, device=z1.device), self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))  # a view is never its own negative
    return F.cross_entropy(logits, pos_idx)


@_full_precision
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: one positive key per query against a queue of K negative keys.

    Args:
        q: (N, D) queries (normalised here).
        k: (N, D) positive keys from the momentum encoder (normalised here; treated as constants: detached).
        queue: (K, D) L2-normalised negative keys from earlier batches (detached).
        temperature: T > 0.
    Returns the mean over N of cross-entropy on logits (N, 1+K) whose label is 0 (the positive).
    """
    _check_pair(q, k, "q and k")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}), got {tuple(queue.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.detach().T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # (N,) positive is column 0
    return F.cross_entropy(logits, labels)


@_full_precision
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss ``2 - 2 cos(p, z)`` averaged over the batch (range [0, 4]).

    p: (N, D) online predictions; z: (N, D) target projections, treated as constants (detached here, the
    target network is never trained by gradient). Identical directions give 0, opposite ones 4.
    """
    _check_pair(p, z, "p and z")
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


@_full_precision
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)) = negative cosine similarity, averaged over the batch (range [-1, 1]).

    p: (N, D) predictor outputs; z: (N, D) projections of the other view. The stop-gradient is applied *inside*
    (``z.detach()``), so callers cannot forget it; it is what keeps SimSiam from collapsing.
    The symmetric loss of the paper is ``0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))``.
    """
    _check_pair(p, z, "p and z")
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@_full_precision
def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, scale: float = 1.0, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins: push the cross-correlation of the two views' embeddings towards the identity.

    Each embedding dimension is standardised over the batch (zero mean, unit population variance, like a
    ``BatchNorm1d(affine=False)`` in training mode), ``C = z1_n.T @ z2_n / N`` (D, D), and the loss is
    ``scale * (sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2)``.

    z1, z2: (N, D) with N >= 2 (for data-parallel training pass the globally gathered batch).
    """
    _check_pair(z1, z2, "z1 and z2")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("Barlow Twins needs a batch of at least 2 samples to standardise over")
    z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)  # (N, D)
    z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)  # (N, D)
    c = z1n.T @ z2n / n  # (D, D) cross-correlation
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


# -- pairwise losses over the two views of a batch ---------------------------------------------------------------
MINING = ("semihard", "hardest")


def two_view_distances(z1: torch.Tensor, z2: torch.Tensor,
                       eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Euclidean distances between the 2N L2-normalised views ``[z1; z2]`` (so every distance is in [0, 2]).

    Returns ``(d, pos, neg_mask)``: ``d`` (2N, 2N) distances (``sqrt`` of the squared distance clamped at ``eps``,
    so the gradient stays finite at 0), ``pos`` (2N,) the column of each anchor's other view, and ``neg_mask``
    (2N, 2N) True where the column is a view of *another* image (neither the anchor nor its positive).
    """
    _check_pair(z1, z2, "z1 and z2")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    sq = (2.0 - 2.0 * z @ z.T).clamp_min(eps)  # (2N, 2N) |a - b|^2 of unit vectors
    d = sq.sqrt()
    idx = torch.arange(2 * n, device=z.device)
    pos = (idx + n) % (2 * n)  # (2N,)
    image = idx % n  # (2N,) which image each view shows
    neg_mask = image.view(-1, 1) != image.view(1, -1)  # (2N, 2N)
    return d, pos, neg_mask


def mine_negatives(d_pos: torch.Tensor, d_neg: torch.Tensor, neg_mask: torch.Tensor, mining: str) -> torch.Tensor:
    """Per anchor, the column of the mined negative (no gradient flows through the choice).

    d_pos: (A,) anchor-positive distances; d_neg: (A, C) anchor-candidate distances; neg_mask: (A, C) True where the
    candidate is a negative (each anchor needs at least one).

    * ``"hardest"``: the closest negative (batch-hard mining, Hermans et al. 2017).
    * ``"semihard"``: FaceNet's semi-hard negative, the closest negative that is *farther* than the positive
      (``d_an > d_ap``); an anchor without one (every negative is at least as close as its positive) takes its
      farthest negative, the easiest of the hard ones.
    """
    if mining not in MINING:
        raise ValueError(f"mining must be one of {', '.join(MINING)}, got {mining!r}")
    if not bool(neg_mask.any(dim=1).all()):
        raise ValueError("every anchor needs at least one negative: a batch of at least 2 images")
    d_neg, d_pos = d_neg.detach(), d_pos.detach()
    inf = torch.full_like(d_neg, float("inf"))
    hardest = torch.where(neg_mask, d_neg, inf).argmin(dim=1)  # (A,)
    if mining == "hardest":
        return hardest
    farther = neg_mask & (d_neg > d_pos.view(-1, 1))  # (A, C)
    semi = torch.where(farther, d_neg, inf).argmin(dim=1)
    easiest = torch.where(neg_mask, d_neg, -inf).argmax(dim=1)
    return torch.where(farther.any(dim=1), semi, easiest)


def _mined(z1: torch.Tensor, z2: torch.Tensor, mining: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(a, p), d(a, n*)) for each of the 2N anchors, each (2N,), n* mined as :func:`mine_negatives`."""
    d, pos, neg_mask = two_view_distances(z1, z2)
    rows = torch.arange(d.shape[0], device=d.device)
    d_ap = d[rows, pos]
    return d_ap, d[rows, mine_negatives(d_ap, d, neg_mask, mining)]


@_full_precision
def margin_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float = 1.0,
                            mining: str = "hardest") -> torch.Tensor:
    """Hadsell, Chopra & LeCun's contrastive loss ``y d^2 + (1 - y) max(0, m - d)^2`` over the two views.

    Every view of the 2N is an anchor; its similar pair (y = 1) is the other view of its image, its dissimilar pair
    (y = 0) one mined view of another image (:func:`mine_negatives`), so positive and negative pairs weigh the same.
    ``d`` is the Euclidean distance of the L2-normalised embeddings (in [0, 2]); the loss is the mean over the 2N
    anchors of ``d(a, p)^2 + max(0, m - d(a, n))^2``. (The paper writes each term with a factor 1/2, a constant
    scale left out here.) z1, z2: (N, D), N >= 2; for data-parallel training pass the gathered batch.
    """
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d_ap, d_an = _mined(z1, z2, mining)
    return (d_ap.pow(2) + F.relu(margin - d_an).pow(2)).mean()


@_full_precision
def triplet_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float = 0.2, mining: str = "semihard") -> torch.Tensor:
    """The triplet loss ``max(0, d(a, p) - d(a, n) + margin)`` over the two views.

    Every view of the 2N is an anchor, its positive is the other view of its image and its negative one mined view
    of another image (:func:`mine_negatives`); ``d`` is the Euclidean distance of the L2-normalised embeddings, as
    in FaceNet (``margin`` 0.2 there). Returns the mean over the 2N anchors. z1, z2: (N, D), N >= 2.
    """
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d_ap, d_an = _mined(z1, z2, mining)
    return F.relu(d_ap - d_an + margin).mean()


# -- CPC ----------------------------------------------------------------------------------------------------------
@_full_precision
def cpc_loss(preds: torch.Tensor, z: torch.Tensor, temperature: float = 0.1, z_all: torch.Tensor | None = None,
             rank: int = 0) -> torch.Tensor:
    """CPC's InfoNCE over a grid of patch embeddings: predict the patch k rows below from the context above.

    Args:
        preds: (K, N, G, G, D) ``preds[k - 1, b, i, j]`` is the prediction, made from the context at row i,
            column j of image b, of the patch at row ``i + k``, same column (rows ``i > G - 1 - k`` have no target
            and are ignored).
        z: (N, G, G, D) the patch embeddings (the targets) of the same N images.
        temperature: T > 0; scores are cosine similarities / T (CPC's critic is the log-bilinear ``z^T W_k c``;
            the linear map ``W_k`` lives in the method, the normalisation keeps scores bounded).
        z_all: (M, G, G, D) the embeddings of the global batch in rank order (``None``: one process, M = N).
        rank: this process's rank; its images are ``z_all[rank*N : (rank+1)*N]``.
    Every patch of every image in the (global) batch is a candidate, so the negatives are the other patches of the
    same image and all patches of other images (CPC v2). Returns the mean over all (k, b, i, j) with a target of
    ``-log exp(s(pred, z_target)) / sum_{all candidate patches c} exp(s(pred, z_c))``.
    """
    if preds.dim() != 5 or z.dim() != 4 or preds.shape[1:] != z.shape or z.shape[1] != z.shape[2]:
        raise ValueError(f"preds must be (K, N, G, G, D) and z (N, G, G, D); got {tuple(preds.shape)} and "
                         f"{tuple(z.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k_steps, n, g = preds.shape[0], z.shape[0], z.shape[1]
    if not 1 <= k_steps < g:
        raise ValueError(f"the number of prediction steps must be in [1, {g - 1}] for a {g}x{g} grid, got {k_steps}")
    if z_all is None:
        z_all, offset = z, 0
    else:
        if z_all.dim() != 4 or z_all.shape[1:] != z.shape[1:]:
            raise ValueError(f"z_all must be (M, {g}, {g}, {z.shape[-1]}), got {tuple(z_all.shape)}")
        offset = rank * n
        if offset + n > z_all.shape[0]:
            raise ValueError(f"rank {rank} with local batch {n} does not fit in gathered batch {z_all.shape[0]}")
    candidates = F.normalize(z_all.reshape(-1, z.shape[-1]), dim=1)  # (M*G*G, D), index ((b*G)+i)*G+j
    b = torch.arange(n, device=z.device).view(-1, 1, 1) + offset
    j = torch.arange(g, device=z.device).view(1, 1, -1)
    total, count = preds.new_zeros(()), 0
    for k in range(1, k_steps + 1):
        i = torch.arange(g - k, device=z.device).view(1, -1, 1)
        p = F.normalize(preds[k - 1, :, : g - k].reshape(-1, z.shape[-1]), dim=1)  # (N*(G-k)*G, D)
        target = (((b * g) + i + k) * g + j).reshape(-1)  # (N*(G-k)*G,) row of z[b, i + k, j] in candidates
        logits = p @ candidates.T / temperature
        total = total + F.cross_entropy(logits, target, reduction="sum")
        count += p.shape[0]
    return total / count


# -- generative: masked reconstruction, colourisation --------------------------------------------------------------
def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p, W/p, C*p*p): the pixels of each p x p patch, row-major over the patch grid."""
    n, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"{h}x{w} images do not divide into {patch}px patches")
    x = x.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, h // patch, w // patch, c * patch * patch)


@_full_precision
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, patch: int,
               norm_pix: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """MAE's loss: the mean squared error of the reconstruction over the pixels of the *masked* patches only.

    pred, target: (N, C, H, W); mask: (N, H/p, W/p), 1 where the patch was hidden from the encoder, 0 where seen.
    With ``norm_pix`` each target patch is standardised first (its mean and variance over its C*p*p values; MAE's
    "normalised pixels" target). Returns ``sum_patches mask * mean_pixels (pred - target)^2 / sum mask``.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must be (N, C, H, W) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    t = patchify(target.detach(), patch)  # (N, h, w, C*p*p)
    if norm_pix:
        t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    per_patch = (patchify(pred, patch) - t).pow(2).mean(dim=-1)  # (N, h, w)
    mask = mask.to(per_patch.dtype)
    if mask.shape != per_patch.shape:
        raise ValueError(f"mask must be (N, H/p, W/p) = {tuple(per_patch.shape)}, got {tuple(mask.shape)}")
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def colour_bins(chroma: torch.Tensor, bins: int, limit: float) -> torch.Tensor:
    """(N, 2, H, W) chroma in [-limit, limit] -> (N, H, W) class ``a * bins + b``: each channel cut into ``bins``
    equal intervals (values beyond the limit fall in the end bins). Colourisation's quantised colour classes."""
    if chroma.dim() != 4 or chroma.shape[1] != 2:
        raise ValueError(f"chroma must be (N, 2, H, W), got {tuple(chroma.shape)}")
    level = ((chroma + limit) / (2 * limit) * bins).floor().long().clamp(0, bins - 1)  # (N, 2, H, W)
    return level[:, 0] * bins + level[:, 1]


def rebalance_weights(p: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Zhang et al.'s class rebalancing: ``w ∝ ((1 - lam) p + lam / Q)^-1`` for the colour classes' frequencies
    ``p`` (Q,), scaled so that ``sum_q p_q w_q = 1`` (the loss keeps its size; rare colours weigh more)."""
    w = 1.0 / ((1.0 - lam) * p + lam / p.numel())
    return w / (p * w).sum()


@_full_precision
def colour_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Colourisation as classification: cross-entropy of (N, Q, H, W) logits against (N, H, W) colour classes,
    each pixel weighted by ``weights[class]`` (Q,) when given; the mean over the N*H*W pixels."""
    ce = F.cross_entropy(logits, target, reduction="none")  # (N, H, W)
    if weights is not None:
        ce = ce * weights.to(ce.dtype)[target]
    return ce.mean()


# -- cluster discrimination and self-distillation -------------------------------------------------------------------
@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's codes: the Sinkhorn-Knopp projection of ``exp(scores / eps)`` (B, K) onto the transport polytope.

    Alternately scales the K prototype rows of ``Q = exp(scores / eps)^T`` to sum 1/K and the B sample columns to
    sum 1/B, ``iters`` times, and returns ``B * Q^T`` (B, K): each sample's row sums to 1 exactly (a soft
    assignment), each prototype's column to B/K once converged (equipartition: no prototype is left empty and
    none takes everything). float32 at least; the global maximum is subtracted first (it cancels out).
    """
    if scores.dim() != 2 or eps <= 0 or iters < 1:
        raise ValueError(f"sinkhorn needs (B, K) scores, eps > 0 and iters >= 1; got {tuple(scores.shape)}, "
                         f"{eps}, {iters}")
    s = scores.float() if scores.dtype in _HALF else scores
    q = torch.exp((s - s.max()) / eps).T  # (K, B)
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype: total mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: total mass 1/B
    return (q * b).T


@_full_precision
def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction: every view predicts the code of every *other* view that has a code.

    scores: one (B, K) per view (prototype scores ``z . c_k``; the codes' views first); codes: one (B, K) per
    view with a code (the first ``len(codes)``, the global views; constants). Returns the mean over the pairs
    (i, v != i) of ``-sum_k q_i log softmax(scores_v / T)``, averaged over the batch.
    """
    if temperature <= 0 or not codes or len(codes) > len(scores):
        raise ValueError("swav_loss needs T > 0 and 1 <= len(codes) <= len(scores)")
    total, pairs = scores[0].new_zeros(()), 0
    for i, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v != i:
                total = total - (q.detach() * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()
                pairs += 1
    return total / max(pairs, 1)


@_full_precision
def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO's cross-entropy between the teacher's centred, sharpened output and the student's, over view pairs.

    student: one (B, K) per view (the global views first, then the local ones); teacher: one (B, K) per global
    view (constants); center: (K,) or (1, K). ``P_t = softmax((g_t - c) / tau_t)``, ``P_s = softmax(g_s / tau_s)``;
    returns the mean over the pairs (teacher view i, student view v != i) of ``-sum_k P_t log P_s``, averaged over
    the batch.
    """
    if student_temp <= 0 or teacher_temp <= 0 or not teacher or len(teacher) > len(student):
        raise ValueError("dino_loss needs temperatures > 0 and 1 <= len(teacher) <= len(student)")
    targets = [F.softmax((t.detach() - center.view(1, -1)) / teacher_temp, dim=1) for t in teacher]
    total, pairs = student[0].new_zeros(()), 0
    for i, p_t in enumerate(targets):
        for v, s in enumerate(student):
            if v != i:
                total = total - (p_t * F.log_softmax(s / student_temp, dim=1)).sum(dim=1).mean()
                pairs += 1
    return total / max(pairs, 1)


@torch.no_grad()
def center_update(center: torch.Tensor, batch_mean: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre: ``c <- m c + (1 - m) mean_b g_t(x_b)``, the batch mean of the teacher's outputs (K,)."""
    return center * momentum + batch_mean.view_as(center) * (1.0 - momentum)
