"""The index kinds, one row each: what FAISS builds, when ``auto`` picks it, how it is searched and changed.

Every index holds inner-product FAISS vectors (L2-normalised, so scores are cosines) under the SQLite row ids of
their items. A kind is one :class:`IndexKind` row of :data:`KINDS`; the CLI's and the UI's choices
(:data:`INDEX_TYPES`), the manifest check, planning, building, search parameters and removal all read the table,
so adding a kind is adding a row. Torch-free, and FAISS is imported only by the functions that build or search.

Notes on the rows. IVF kinds hold ids natively with a hash-table direct map instead of an ``IDMap2`` wrapper:
``IDMap2`` renumbers its id map on ``remove_ids`` while IVF lists keep the old internal numbers, which silently
returns wrong items after a removal. HNSW cannot remove vectors, so removed rows become tombstones that searches
over-fetch past and filter out (past :data:`TOMBSTONE_REBUILD_FRACTION` the graph is rebuilt from its own vectors).
An ``auto`` index is flat below 50k vectors, hnsw below 2M, ivfpq beyond, and moves up when an add crosses a
threshold; a trained kind asked for with fewer than ``min_train`` vectors stays exact (flat) until it has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import LookalikeError

if TYPE_CHECKING:  # pragma: no cover
    import faiss
    import numpy as np

AUTO = "auto"
TRAIN_SAMPLE = 100_000  # most vectors k-means sees when a trained kind is built
TOMBSTONE_REBUILD_FRACTION = 0.2
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16  # nprobe of an IVF manifest that lacks one (the plan stores its own)


@dataclass(frozen=True)
class Plan:
    """A resolved index kind: the FAISS factory string and the parameters kept in the manifest."""

    kind: str
    factory: str
    params: dict
    note: str | None = None


@dataclass(frozen=True)
class IndexKind:
    """One index kind (a row of :data:`KINDS`)."""

    name: str
    help: str  # one line for the CLI's and the UI's help
    rank: int  # an "auto" index only ever moves to a kind of higher rank
    layout: Callable[[int, int], tuple[str, dict]]  # (vectors, dim) -> (FAISS factory string, stored params)
    search_params: dict[str, int]  # search-time parameters a user may set, with their defaults
    auto_from: int | None = None  # "auto" picks this kind from this many vectors (None: never)
    min_train: int = 0  # fewest vectors it is trained on; below that the index stays flat (with a note)
    tombstones: bool = False  # cannot remove vectors: removed rows are marked and filtered at search time
    configure: Callable[[Any, dict], None] | None = None  # sets build-time knobs on the new FAISS index
    searcher: Callable[[dict, int], Any] | None = None  # (stored params, results wanted) -> FAISS SearchParameters


def _flat(n: int, dim: int) -> tuple[str, dict]:
    return "IDMap2,Flat", {}


def _hnsw(n: int, dim: int) -> tuple[str, dict]:
    return f"IDMap2,HNSW{HNSW_M}", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}


def _hnsw_configure(index: Any, params: dict) -> None:
    import faiss

    faiss.downcast_index(index.index).hnsw.efConstruction = params["efConstruction"]


def _hnsw_search(params: dict, fetch: int) -> Any:
    import faiss

    # A graph search must look at least as wide as the number of results it returns.
    return faiss.SearchParametersHNSW(efSearch=max(int(params.get("efSearch", HNSW_EF_SEARCH)), fetch))


def _ivf_search(params: dict, fetch: int) -> Any:
    import faiss

    return faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", IVF_NPROBE)))


def _ivf_params(n: int) -> dict:
    # ~4*sqrt(N) lists, but >= 39 training points per list: k-means sees at most TRAIN_SAMPLE vectors, so past
    # ~400k vectors the sample, not N, bounds nlist (4000 lists on a 100k sample would be under-trained).
    nlist = max(1, min(round(4 * math.sqrt(n)), min(n, TRAIN_SAMPLE) // 39))
    return {"nlist": nlist, "nprobe": min(nlist, max(IVF_NPROBE, nlist // 16)), "trained_on": min(n, TRAIN_SAMPLE)}


def _ivf(n: int, dim: int) -> tuple[str, dict]:
    params = _ivf_params(n)
    return f"IVF{params['nlist']},Flat", params


def pq_m(dim: int) -> int:
    """PQ sub-quantizers: about 4 dims each, at most 64 bytes a vector, and a divisor of ``dim``."""
    target = max(1, min(64, dim // 4))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _ivfpq(n: int, dim: int) -> tuple[str, dict]:
    params, m = _ivf_params(n), pq_m(dim)
    # "np": skip polysemous training (a slow annealing step that only serves Hamming pre-filtering, unused here).
    return f"IVF{params['nlist']},PQ{m}np", {**params, "m": m, "nbits": 8}


KINDS: dict[str, IndexKind] = {k.name: k for k in (
    IndexKind("flat", "exact search", rank=0, layout=_flat, search_params={}, auto_from=0),
    IndexKind("hnsw", "approximate graph search (removals leave tombstones)", rank=1, layout=_hnsw,
              search_params={"efSearch": HNSW_EF_SEARCH}, auto_from=50_000, tombstones=True,
              configure=_hnsw_configure, searcher=_hnsw_search),
    IndexKind("ivf", "approximate, inverted lists trained on a sample", rank=1, layout=_ivf,
              search_params={"nprobe": IVF_NPROBE}, min_train=1_000, searcher=_ivf_search),
    IndexKind("ivfpq", "approximate, compressed vectors in trained lists (least memory)", rank=2, layout=_ivfpq,
              search_params={"nprobe": IVF_NPROBE}, auto_from=2_000_000,
              min_train=10_000, searcher=_ivf_search),  # 8-bit PQ codebooks want ~39 * 256 points
)}
INDEX_TYPES: tuple[str, ...] = (AUTO, *KINDS)
DEFAULT_INDEX_TYPE = AUTO


def types_help() -> str:
    """One line on every type one may ask for, for the CLI's and the UI's help."""
    steps = sorted((k for k in KINDS.values() if k.auto_from is not None), key=lambda k: k.auto_from)
    auto = ", ".join(f"{k.name} from {k.auto_from:,}" if k.auto_from else k.name for k in steps)
    return "; ".join([f"{AUTO}: by size ({auto} vectors)", *(f"{k.name}: {k.help}" for k in KINDS.values())])


def is_type(name: object) -> bool:
    """Whether ``name`` is an index type one may ask for: "auto" or a row of the table."""
    return name == AUTO or name in KINDS


def check_type(name: str) -> str:
    """``name`` if it is an index type one may ask for, else a LookalikeError listing them."""
    if not is_type(name):
        raise LookalikeError(f"unknown index type {name!r}; choose one of {', '.join(INDEX_TYPES)}")
    return name


def target_kind(requested: str, n: int) -> str:
    """The kind ``requested`` (a kind or "auto") should have at ``n`` vectors."""
    if requested == AUTO:
        eligible = [k for k in KINDS.values() if k.auto_from is not None and k.auto_from <= n]
        return max(eligible, key=lambda k: k.auto_from).name
    if n < KINDS[requested].min_train:
        return "flat"
    return requested


def plan(requested: str, n: int, dim: int) -> Plan:
    """What to build for ``requested`` at ``n`` vectors of ``dim``."""
    name = target_kind(requested, n)
    note = None
    if name == "flat" and requested != name and requested != AUTO:
        need = KINDS[requested].min_train
        note = f"{requested} is trained at the first add" if n == 0 else (
            f"{requested} needs at least {need} vectors to train, had {n}: using exact flat search; it switches "
            f"to {requested} once an add brings enough vectors")
    factory, params = KINDS[name].layout(n, dim)
    return Plan(name, factory, params, note)


def build(p: Plan, dim: int, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A new index of plan ``p`` holding ``vectors`` under ``ids`` (trained kinds on a sample of them)."""
    import faiss
    import numpy as np

    index = faiss.index_factory(dim, p.factory, faiss.METRIC_INNER_PRODUCT)
    row = KINDS[p.kind]
    if row.configure is not None:
        row.configure(index, p.params)
    if row.min_train:
        sample = vectors
        if len(vectors) > TRAIN_SAMPLE:
            sample = vectors[np.random.default_rng(0).choice(len(vectors), TRAIN_SAMPLE, replace=False)]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove_ids by id
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def clone(index: faiss.Index) -> faiss.Index:
    import faiss

    try:
        return faiss.clone_index(index)
    except RuntimeError:  # types without a cloner: round-trip through bytes
        return faiss.deserialize_index(faiss.serialize_index(index))


def search_parameters(manifest: dict, fetch: int) -> Any:
    """FAISS search parameters for an index of ``manifest`` asked for ``fetch`` results (None: none needed)."""
    row = KINDS[manifest["index_type"]]
    return None if row.searcher is None else row.searcher(manifest.get("params") or {}, fetch)
