"""A label-free scorecard: how well an encoder searches a folder that has no labels.

Most collections have no labels, so "is this encoder better here?" is answered from the folder alone. A seeded
sample of the folder's images (the *queries*) gets edited copies, made with edits people apply to photos and that
no training augmentation makes (:data:`EDITS`: an app frame, a caption and stickers, heavy JPEG, down-and-up
scaling, a perspective warp, a colour filter, a detail crop, a mirror). Each copy is searched among the *searched
set* (the sample of the folder, ``sample`` images at most, the query itself included). Parts, each in [0, 1]:

* ``content_recall@1`` -- the copy's nearest image is its original (ties count against the encoder), over the
  copies made with :data:`CONTENT_EDITS` (app frame, caption and stickers, perspective, colour filter, detail crop);
* ``copy_recall@1`` -- the same over every copy; ``edit/NAME`` -- over the copies of one edit;
* ``copy_mrr`` -- mean reciprocal rank of the original (1/rank, ranks past 100 count 0);
* ``stability@10`` -- share of the query's 10 nearest other images that are also among its copy's 10 nearest
  (neighbourhood stability: an edit should not change what an image is similar to);
* ``rankme`` -- effective rank of the searched set's vectors (RankMe, Garrido et al. 2023: exp of the entropy of
  the normalised singular values), as a share of the most it can be; ``uniformity`` -- Wang & Isola (2020)'s
  ``-log E exp(-2 |x - y|^2)`` over random pairs, divided by 4 (its value for vectors spread over the sphere);
  ``alignment`` -- ``1 - E |f(x) - f(copy)|^2 / 4``. These three are the representation's health.
* ``copy_micro_ap`` -- DISC21's micro-AP of the copies' top-10 results (reported, not in the score).
* ``marks`` -- with ``marks`` (query, result, right?) from Search: share of the marks the encoder agrees with
  (a right result among the query's 10 nearest of the searched set, a wrong one not), and ``marks_n``.

The headline ``score`` is :data:`SCORE_WEIGHTS`' blend of content recall (3/4) and stability (1/4), times a health
gate that sends a collapsed encoder (all vectors alike, or an effective rank of a few dimensions) to 0; with marks,
they are blended in with a weight that grows with their number. ``ci`` is a 95% bootstrap interval over the queries
(and marks). The same ``seed`` and ``sample`` pick the same queries and copies for every encoder, so scores of one
folder compare.
See docs/scorecard.md for what each part measured against labels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from .errors import BadImageError, LookalikeError

SCORECARD_VERSION = 1
DEFAULT_SAMPLE = 2000  # images searched at most (the rest of a bigger folder is not embedded)
QUERIES = 150  # sampled images that get edited copies
COPIES_PER_QUERY = 2
NEIGHBOURS = 10  # k of stability@10 and of the marks' check
MRR_DEPTH = 100
MIN_IMAGES = 3
BOOTSTRAP = 500
EDIT_SIDE = 384  # originals are shrunk to this longer side before editing (cheap edits, same for every encoder)
HEALTH_RANK = 8.0  # effective rank below which the score is scaled down (a collapsed encoder has about 1)
MARKS_WEIGHT_HALF = 50  # marks weigh half of the score when there are this many
# the headline's parts and their weights (docs/scorecard.md: chosen on the benchmarks' rows, in-sample)
SCORE_WEIGHTS = {"content_recall@1": 0.75, "stability@10": 0.25}

Progress = Callable[[int, int, str], None]  # (done, total, stage)


# ----------------------------------------------------------------------------------------------------------------
# edits (none of them is a training augmentation of training/augment.py)
# ----------------------------------------------------------------------------------------------------------------
def _frame(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A screenshot: the image inside an app's chrome (title bar, side margins, a dark or light theme)."""
    w, h = img.size
    dark = rng.random() < 0.5
    bg = (28, 28, 30) if dark else (242, 242, 247)
    top, side, bottom = int(h * rng.uniform(0.12, 0.2)), int(w * rng.uniform(0.04, 0.1)), int(h * rng.uniform(0.1, 0.2))
    out = Image.new("RGB", (w + 2 * side, h + top + bottom), bg)
    out.paste(img, (side, top))
    d = ImageDraw.Draw(out)
    fg = (200, 200, 205) if dark else (60, 60, 67)
    d.rectangle((side, top // 3, side + w // 3, top // 3 + max(2, top // 5)), fill=fg)
    for i in range(4):  # bottom bar icons
        cx = side + (i + 0.5) * w / 4
        d.ellipse((cx - bottom / 5, h + top + bottom / 3, cx + bottom / 5, h + top + bottom / 3 + bottom / 2.5),
                  outline=fg, width=2)
    return out


def _overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption and two stickers."""
    out = img.copy()
    w, h = out.size
    d = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, h // 9))
    words = ("so true", "LOL", "look!", "2019", "me irl", "wow", "summer")
    d.text((w * rng.uniform(0.05, 0.3), h * rng.uniform(0.7, 0.8)), str(rng.choice(words)), font=font,
           fill=(255, 255, 255), stroke_width=max(1, h // 80), stroke_fill=(0, 0, 0))
    for _ in range(2):
        r = min(w, h) * rng.uniform(0.06, 0.12)
        x, y = rng.uniform(r, w - r), rng.uniform(r, h * 0.6)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255), width=max(1, int(r / 6)))
    return out


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy re-compression after a downscale (a messaging app's copy of a copy)."""
    from .imageio import jpeg_round_trip

    w, h = img.size
    f = rng.uniform(0.3, 0.5)
    small = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR)
    return jpeg_round_trip(small, int(rng.integers(8, 20)))


def _rescale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Down to a thumbnail and back up, with nearest-neighbour (blocky) upscaling."""
    w, h = img.size
    f = rng.uniform(0.12, 0.2)
    small = img.resize((max(4, int(w * f)), max(4, int(h * f))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo of the picture taken at an angle (corners moved by up to 18% of the side)."""
    w, h = img.size
    m = 0.18
    quad = [rng.uniform(0, m) * w, rng.uniform(0, m) * h, rng.uniform(0, m) * w, h - rng.uniform(0, m) * h,
            w - rng.uniform(0, m) * w, h - rng.uniform(0, m) * h, w - rng.uniform(0, m) * w, rng.uniform(0, m) * h]
    return img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=(90, 90, 90))


def _filter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo app's filter: sepia, warm or cold tint, faded, or posterised."""
    kind = int(rng.integers(0, 4))
    if kind == 0:
        grey = ImageOps.grayscale(img)
        return ImageOps.colorize(grey, (40, 26, 13), (255, 236, 200))
    if kind == 1:
        r, g, b = img.split()
        warm = rng.random() < 0.5
        r = r.point(lambda v: min(255, int(v * (1.15 if warm else 0.85))))
        b = b.point(lambda v: min(255, int(v * (0.8 if warm else 1.2))))
        return Image.merge("RGB", (r, g, b))
    if kind == 2:
        return ImageEnhance.Contrast(img).enhance(0.5).point(lambda v: 60 + int(v * 0.75))
    return ImageOps.posterize(img, 2)


def _detail(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop to a detail: 55-70% of each side, anywhere."""
    w, h = img.size
    f = rng.uniform(0.55, 0.7)
    cw, ch = int(w * f), int(h * f)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _mirror(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirrored (a selfie camera's copy) and slightly rotated."""
    return ImageOps.mirror(img).rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR, expand=False,
                                       fillcolor=(255, 255, 255))


# edit name -> function. Copies of the n-th query use EDITS[2n % 8] and EDITS[(2n + 1) % 8]: every edit is used as
# often as the others, and the order pairs each query's content edit with one of the others.
EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "frame": _frame, "jpeg": _jpeg, "overlay": _overlay, "rescale": _rescale,
    "perspective": _perspective, "mirror": _mirror, "filter": _filter, "detail": _detail,
}
# The edits of the headline's copy retrieval. Heavy JPEG and down-up scaling are left out because raw pixels see
# through them best (pixels found 97% and 93% of those emoji copies, the pretrained encoders 0-23%), so they reward
# matching pixels rather than content; the mirror because average pooling is blind to it, so it rewards invariance
# the labels did not ask for (docs/scorecard.md: Spearman with labels of each edit alone on each benchmark).
CONTENT_EDITS = ("frame", "overlay", "perspective", "filter", "detail")


def edit_for(query: int, copy: int, seed: int) -> tuple[str, np.random.Generator]:
    """The edit of copy ``copy`` of query number ``query`` and its random generator (the same for every encoder)."""
    name = list(EDITS)[(query * COPIES_PER_QUERY + copy) % len(EDITS)]
    return name, np.random.default_rng([seed, query, copy, 1])


# ----------------------------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Scorecard:
    """One encoder's label-free score on one folder. ``score`` is higher-is-better, in [0, 1]."""

    score: float
    ci: tuple[float, float]
    parts: dict[str, float]
    n_images: int
    seed: int
    n_queries: int = 0
    n_copies: int = 0
    sample: int = DEFAULT_SAMPLE
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"} of files that could not be read
    encoder: str = ""
    seconds: float = 0.0
    version: int = SCORECARD_VERSION

    def to_json(self) -> dict:
        out = asdict(self)
        out["ci"] = [float(self.ci[0]), float(self.ci[1])]
        return out

    @classmethod
    def from_json(cls, obj: dict) -> Scorecard:
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        known["ci"] = tuple(known.get("ci", (0.0, 0.0)))
        return cls(**known)

    def summary(self) -> str:
        lo, hi = self.ci
        parts = "  ".join(f"{k} {v:.3f}" for k, v in self.parts.items() if k in SCORE_WEIGHTS)
        marks = f", {int(self.parts['marks_n'])} marks" if self.parts.get("marks_n") else ""
        return (f"scorecard {self.score:.3f} [{lo:.3f}, {hi:.3f}]  ({self.n_images} images, {self.n_queries} "
                f"queries{marks}, seed {self.seed})  {parts}")


# ----------------------------------------------------------------------------------------------------------------
# sampling and embedding
# ----------------------------------------------------------------------------------------------------------------
def choose_sample(paths: Sequence[str], seed: int = 0, sample: int | None = None) -> tuple[list[str], list[int]]:
    """(searched paths, positions of the queries among them): a seeded subset, the same for every encoder.

    The searched set is ``sample`` (default :data:`DEFAULT_SAMPLE`) images at most, in the folder's sorted order;
    the queries are :data:`QUERIES` of them at most.
    """
    cap = DEFAULT_SAMPLE if sample is None else int(sample)
    if cap < MIN_IMAGES:
        raise LookalikeError(f"the scorecard's sample must be at least {MIN_IMAGES} images")
    ordered = sorted(dict.fromkeys(str(p) for p in paths))
    rng = np.random.default_rng([seed, 7])
    if len(ordered) > cap:
        keep = np.sort(rng.choice(len(ordered), cap, replace=False))
        ordered = [ordered[i] for i in keep]
    n_queries = min(QUERIES, len(ordered))
    queries = np.sort(rng.choice(len(ordered), n_queries, replace=False)).tolist() if ordered else []
    return ordered, queries


def _embed_paths(encoder, paths: list[str], progress: Progress | None, stage: str):
    """Embed files given by path with the indexing code path; returns the EmbedResult (paths as given)."""
    from .collection import Collection
    from .embed import embed_collection

    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else os.getcwd()
    rel = [os.path.relpath(p, root) for p in absolute]
    hook = None if progress is None else (lambda done, total: progress(done, total, stage))
    res = embed_collection(encoder, Collection(Path(root)), paths=rel, progress=False, on_progress=hook)
    back = dict(zip(rel, paths))
    res.paths = [back[p] for p in res.paths]
    for s in res.skipped:
        s.path = back.get(s.path, s.path)
    return res


def _load_for_edit(path: str) -> Image.Image:
    from .imageio import load_image

    img = load_image(path, reduce_to=EDIT_SIDE)
    if max(img.size) > EDIT_SIDE:
        img.thumbnail((EDIT_SIDE, EDIT_SIDE), Image.Resampling.BILINEAR)
    return img


def embed_copies(encoder, paths: list[str], queries: list[int], seed: int,
                 progress: Progress | None = None, batch: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Edited copies of ``paths[q]`` for each query q: (vectors (C, dim), query position of each copy (C,), the
    edit of each copy).

    A query whose file cannot be decoded any more gets no copies.
    """
    vecs, owners, pending, owner_pending, edits = [], [], [], [], []
    total = len(queries) * COPIES_PER_QUERY

    def flush():
        if pending:
            vecs.append(encoder.embed_images(pending))
            owners.extend(owner_pending)
            pending.clear()
            owner_pending.clear()

    for n, q in enumerate(queries):
        try:
            original = _load_for_edit(paths[q])
        except BadImageError:
            continue
        for c in range(COPIES_PER_QUERY):
            name, rng = edit_for(n, c, seed)
            pending.append(EDITS[name](original, rng).convert("RGB"))
            owner_pending.append(q)
            edits.append(name)
        if len(pending) >= batch:
            flush()
        if progress is not None:
            progress((n + 1) * COPIES_PER_QUERY, total, "edited copies")
    flush()
    if not vecs:
        return np.zeros((0, encoder.dim), np.float32), np.zeros(0, np.int64), []
    return np.concatenate(vecs).astype(np.float32), np.asarray(owners, np.int64), edits


# ----------------------------------------------------------------------------------------------------------------
# the parts
# ----------------------------------------------------------------------------------------------------------------
def effective_rank(x: np.ndarray) -> float:
    """RankMe: exp of the entropy of the normalised singular values of ``x`` (N, D); 1 for a collapsed set."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return 0.0
    small = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x  # the smaller Gram matrix: same non-zero spectrum
    s = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0.0, None))
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + 1e-12
    return float(math.exp(-(p * np.log(p)).sum()))


def uniformity(x: np.ndarray, seed: int = 0, n: int = 1000) -> float:
    """Wang & Isola's uniformity ``log E exp(-2 |x - y|^2)`` over distinct pairs of up to ``n`` rows (lower: more
    spread; about -4 for vectors spread over a high-dimensional sphere, 0 when collapsed)."""
    x = np.asarray(x, np.float64)
    if len(x) > n:
        x = x[np.random.default_rng([seed, 11]).choice(len(x), n, replace=False)]
    if len(x) < 2:
        return 0.0
    d2 = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)[np.triu_indices(len(x), 1)]
    return float(np.log(np.mean(np.exp(-2.0 * d2))))


def _neighbours(sims: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of each row of ``sims`` (R, N), leaving out column ``exclude[r]``; ties broken by position."""
    s = sims.copy()
    s[np.arange(len(s)), exclude] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def copy_parts(db: np.ndarray, copies: np.ndarray, owners: np.ndarray, edits: Sequence[str],
               k: int = NEIGHBOURS) -> dict[str, np.ndarray]:
    """Per-copy values: ``recall1``, ``content`` (recall1 of the :data:`CONTENT_EDITS` copies, NaN for the others),
    ``rr`` (reciprocal rank), ``stability``, ``align`` (squared distance), and the top-k ``scores``/``rel`` for
    micro-AP. ``db`` (N, dim) and ``copies`` (C, dim) L2-normalised; ``owners`` (C,); ``edits`` the copies' edits."""
    sims = copies @ db.T  # (C, N)
    true = sims[np.arange(len(copies)), owners]  # (C,)
    others = sims.copy()
    others[np.arange(len(copies)), owners] = -np.inf
    rank = 1 + (others >= true[:, None]).sum(axis=1)  # ties count against the encoder
    k = max(1, min(k, len(db) - 1))
    own = _neighbours(db[owners] @ db.T, owners, k)  # (C, k) the original's neighbours
    mine = _neighbours(sims, owners, k)  # (C, k) the copy's, its original left out
    stability = np.array([len(set(a) & set(b)) / k for a, b in zip(own.tolist(), mine.tolist())])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    recall1 = (rank == 1).astype(float)
    content = np.where(np.isin(np.asarray(edits), CONTENT_EDITS), recall1, np.nan)
    return {"recall1": recall1, "content": content, "rr": np.where(rank <= MRR_DEPTH, 1.0 / rank, 0.0),
            "stability": stability, "align": ((copies - db[owners]) ** 2).sum(axis=1),
            "scores": np.take_along_axis(sims, top, axis=1), "rel": top == owners[:, None]}


def marks_agreement(db: np.ndarray, q_vecs: np.ndarray, r_vecs: np.ndarray, right: np.ndarray,
                    k: int = NEIGHBOURS) -> np.ndarray:
    """Per mark, 1.0 when the encoder agrees with it: a right result would be among the query's ``k`` nearest of the
    searched set ``db``, a wrong one would not."""
    sim_r = (q_vecs * r_vecs).sum(axis=1)  # (M,)
    sims = q_vecs @ db.T  # (M, N)
    # the searched images closer to the query than the result, the query itself (and the result) not counted
    ahead = (sims > sim_r[:, None] + 1e-6).sum(axis=1) - (sims > 1 - 1e-6).sum(axis=1).clip(0, 1)
    within = ahead < k
    return np.where(right, within, ~within).astype(float)


def _per_query(parts: dict[str, np.ndarray], owners: np.ndarray, queries: list[int]) -> dict[str, np.ndarray]:
    """Average each per-copy value over a query's copies: (Q,) arrays over the queries that got copies (NaN where a
    query has no copy the value is defined for)."""
    keep = [q for q in queries if (owners == q).any()]
    out = {}
    for name in ("recall1", "content", "rr", "stability", "align"):
        values = [parts[name][owners == q] for q in keep]
        out[name] = np.array([v[~np.isnan(v)].mean() if (~np.isnan(v)).any() else np.nan for v in values])
    return out


PART_KEYS = {"content_recall@1": "content", "copy_recall@1": "recall1", "copy_mrr": "rr", "stability@10": "stability"}


def _mean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else 0.0


def health_gate(rank: float) -> float:
    """1 for a healthy effective rank, falling to 0 as it nears 1 (every vector alike, or along one line)."""
    return float(np.clip((rank - 1.0) / (HEALTH_RANK - 1.0), 0.0, 1.0))


def combine(per_query: dict[str, np.ndarray], gate: float, marks: np.ndarray | None = None) -> float:
    """The headline from per-query values (:data:`SCORE_WEIGHTS`), the health gate and the marks' agreement."""
    label_free = sum(w * _mean(per_query[PART_KEYS[p]]) for p, w in SCORE_WEIGHTS.items())
    if marks is None or not len(marks):
        return gate * label_free
    w = len(marks) / (len(marks) + MARKS_WEIGHT_HALF)
    return gate * ((1 - w) * label_free + w * float(marks.mean()))


def bootstrap_ci(per_query: dict[str, np.ndarray], gate: float, marks: np.ndarray | None, seed: int,
                 rounds: int = BOOTSTRAP) -> tuple[float, float]:
    """95% interval of :func:`combine` with the queries (and marks) drawn again with replacement."""
    rng = np.random.default_rng([seed, 23])
    n = len(next(iter(per_query.values())))
    if n == 0:
        return 0.0, 0.0
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        m = None if marks is None or not len(marks) else marks[rng.integers(0, len(marks), len(marks))]
        values.append(combine({k: v[pick] for k, v in per_query.items()}, gate, m))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def score_vectors(db: np.ndarray, queries: list[int], copies: np.ndarray, owners: np.ndarray, edits: Sequence[str],
                  *, seed: int = 0, marks: np.ndarray | None = None) -> tuple[float, tuple[float, float], dict]:
    """(score, ci, parts) from embedded vectors: ``db`` the searched set, ``copies`` the edited copies of the
    searched images at positions ``owners`` made with ``edits``, ``marks`` the per-mark agreement
    (:func:`marks_agreement`)."""
    from .metrics import micro_average_precision

    if len(copies) == 0:
        raise LookalikeError("no edited copy could be made: none of the sampled images could be read (for an index: "
                             "are its files still where it was built from? refresh it)")
    per_copy = copy_parts(db, copies, owners, edits)
    per_query = _per_query(per_copy, owners, queries)
    rank = effective_rank(db)
    gate = health_gate(rank)
    parts = {name: _mean(per_query[key]) for name, key in PART_KEYS.items()}
    parts["copy_micro_ap"] = micro_average_precision(per_copy["scores"], per_copy["rel"], len(copies))
    parts["rankme"] = rank / max(1, min(db.shape))
    parts["effective_rank"] = rank
    parts["uniformity"] = -uniformity(db, seed) / 4.0
    parts["alignment"] = 1.0 - float(per_query["align"].mean()) / 4.0
    parts["health"] = gate
    for name in dict.fromkeys(edits):  # recall@1 of each edit's copies: which edit an encoder does not see through
        parts[f"edit/{name}"] = float(per_copy["recall1"][np.asarray(edits) == name].mean())
    if marks is not None and len(marks):
        parts["marks"] = float(marks.mean())
        parts["marks_n"] = float(len(marks))
    return combine(per_query, gate, marks), bootstrap_ci(per_query, gate, marks, seed), parts


# ----------------------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------------------
Mark = tuple[str, str, bool]  # (query path, result path, marked right?)


def _mark_vectors(encoder, marks: Sequence[Mark], known: dict[str, np.ndarray],
                  progress: Progress | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Query and result vectors of the marks whose two images decode (embedding those not searched)."""
    key = os.path.abspath
    missing = sorted({key(p) for q, r, _ in marks for p in (q, r)} - set(known))
    if missing:
        res = _embed_paths(encoder, missing, progress, "marked images")
        known = {**known, **{key(p): v for p, v in zip(res.paths, res.vectors)}}
    usable = [(known[key(q)], known[key(r)], bool(ok)) for q, r, ok in marks if key(q) in known and key(r) in known]
    if not usable:
        return None
    qv, rv, right = zip(*usable)
    return np.stack(qv), np.stack(rv), np.array(right)


def score_embedded(encoder, paths: Sequence[str], vectors: np.ndarray, *, seed: int = 0, sample: int | None = None,
                   marks: Sequence[Mark] | None = None, progress: Progress | None = None,
                   skipped: Sequence[dict] = ()) -> Scorecard:
    """The scorecard from vectors already computed with ``encoder`` (an index's): ``vectors[i]`` is ``paths[i]``.

    Only the edited copies (and marked images not in ``paths``) are embedded. The same ``seed`` and ``sample`` give
    the same queries as :func:`score_encoder` on those paths.
    """
    t0 = time.perf_counter()
    if len(paths) < MIN_IMAGES:
        raise LookalikeError(f"the scorecard needs at least {MIN_IMAGES} readable images, the folder has "
                             f"{len(paths)}")
    chosen, queries = choose_sample(paths, seed, sample)
    where = {str(p): i for i, p in enumerate(paths)}
    db = np.asarray(vectors, np.float32)[[where[p] for p in chosen]]
    copies, owners, edits = embed_copies(encoder, chosen, queries, seed, progress)
    agreement = None
    if marks:
        known = {os.path.abspath(p): db[i] for i, p in enumerate(chosen)}
        mv = _mark_vectors(encoder, marks, known, progress)
        agreement = None if mv is None else marks_agreement(db, *mv)
    score, ci, parts = score_vectors(db, queries, copies, owners, edits, seed=seed, marks=agreement)
    if marks and agreement is None:
        parts["marks_n"] = 0.0
    return Scorecard(score=score, ci=ci, parts=parts, n_images=len(chosen), seed=seed, n_queries=len(queries),
                     n_copies=len(copies), sample=DEFAULT_SAMPLE if sample is None else int(sample),
                     skipped=list(skipped), encoder=getattr(encoder, "spec", ""),
                     seconds=round(time.perf_counter() - t0, 2))


def score_encoder(encoder, paths: Sequence[str | os.PathLike], *, seed: int = 0, sample: int | None = None,
                  marks: Sequence[Mark] | None = None, progress: Progress | None = None) -> Scorecard:
    """Score ``encoder`` (a :class:`retrieval.encoders.Encoder`) on the images at ``paths`` (a folder's files).

    Files that cannot be decoded are left out and listed in ``Scorecard.skipped``. ``progress(done, total, stage)``
    is called as images are embedded. Raises :class:`LookalikeError` when fewer than :data:`MIN_IMAGES` images decode.
    """
    t0 = time.perf_counter()
    chosen, _ = choose_sample([str(p) for p in paths], seed, sample)
    res = _embed_paths(encoder, chosen, progress, "searched images")
    skipped = [{"path": s.path, "reason": s.reason} for s in res.skipped]
    card = score_embedded(encoder, res.paths, res.vectors, seed=seed, sample=sample, marks=marks, progress=progress,
                          skipped=skipped)
    card.seconds = round(time.perf_counter() - t0, 2)
    return card


def folder_paths(folder: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """Every image file of ``folder`` and its sub-folders (labels ignored), and the files the scan skipped."""
    from .collection import scan

    coll = scan(folder)
    return [str(coll.abspath(it)) for it in coll.items], [{"path": s.path, "reason": s.reason} for s in coll.skipped]


def score_folder(spec_or_encoder, folder: str | os.PathLike, *, seed: int = 0, sample: int | None = None,
                 marks: Sequence[Mark] | None = None, progress: Progress | None = None,
                 device: str = "cpu") -> Scorecard:
    """:func:`score_encoder` on every image under ``folder``; ``spec_or_encoder`` is an Encoder or a spec string."""
    encoder = spec_or_encoder
    if isinstance(spec_or_encoder, (str, os.PathLike)):
        from .encoders import load_encoder

        encoder = load_encoder(str(spec_or_encoder), device=device)
    paths, scan_skipped = folder_paths(folder)
    card = score_encoder(encoder, paths, seed=seed, sample=sample, marks=marks, progress=progress)
    card.skipped = scan_skipped + card.skipped
    return card
