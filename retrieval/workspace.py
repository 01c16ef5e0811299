"""The operations the CLI and the web UI offer, each one call: build, add, remove, refresh, search, evaluate.

A :class:`Workspace` is an indexes root plus caches of loaded encoders and opened indexes (keyed, never global),
so a long-lived app loads each model once while a CLI call stays a one-shot.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import IndexNotFoundError, LookalikeError
from .fsutil import read_json_dict
from .store_files import MANIFEST, describe_from_disk, list_indexes, validate_name

if TYPE_CHECKING:  # pragma: no cover
    from .collection import Collection, Item, Skipped
    from .distributed import Ranks
    from .encoders import Encoder
    from .index_store import IndexStore

# Encoders (torch), embedding and the store (numpy, FAISS) are imported by the operations that use them, so that
# listing indexes or reading a manifest starts in a fraction of a second.

Progress = Callable[[int, int], None]
# Search-time stages a search gets unless told otherwise (measured: docs/retrieval-tools.md, bench/pipeline.py).
# Off: αQE over 2 neighbours won on Tux Paint, copy detection and Fashion-MNIST but not on emoji (-0.0006
# recall@1), and a stage is on by default only where it wins everywhere; DBA lost 0.07 micro-AP on copy detection.
QE_NEIGHBOURS = 2  # what query expansion uses when it is asked for (the Search tab's toggle)
SEARCH_DEFAULTS = {"qe": 0, "dba": 0}

# In an indexes root: which index a command that names none uses (``lookalike search IMAGE``). Written by
# ``index build/search --set-default`` and the demo; ignored where the index it names no longer exists.
DEFAULT_FILE = ".default.json"
# The encoder ``index build`` uses when given none and no pretrained encoder is installed: the baseline every
# learned encoder is measured against (fast, no weights needed).
FALLBACK_ENCODER = "pixels"


def load_encoder(spec: str, device: str = "cpu") -> Encoder:
    """:func:`retrieval.encoders.load_encoder`, imported on first use (it brings torch)."""
    from .encoders import load_encoder as load

    return load(spec, device=device)


@dataclass
class Result:
    rank: int
    path: str
    score: float
    label: str | None = None

    def to_json(self) -> dict:
        return {"rank": self.rank, "path": self.path, "score": round(float(self.score), 6)}


@dataclass
class BuildReport:
    name: str
    count: int
    dim: int
    encoder: dict
    skipped: list[Skipped] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    images_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. a stale whitening)

    def to_json(self) -> dict:
        return {"name": self.name, "count": self.count, "dim": self.dim, "encoder": self.encoder,
                "added": self.added, "removed": self.removed, "notes": self.notes,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


class Workspace:
    """Indexes under ``root`` (default ``./indexes``) and the encoders that built them."""

    def __init__(self, root: str | Path = "indexes", device: str = "cpu", confine: list[Path] | None = None):
        self.root = Path(root)
        self.device = device
        # the folders a scan may follow links into (the web app's allowed roots); None: links are followed
        self.confine = confine
        self._encoders: dict[str, Encoder] = {}
        self._stores: dict[str, IndexStore] = {}
        self._learnt: dict[str, tuple] = {}  # name -> ((uid, generation), mean, matrix, re-projected FAISS index)
        self._lock = threading.RLock()

    # ----- encoders and stores -------------------------------------------------------------------------------
    def encoder(self, spec: str) -> Encoder:
        with self._lock:
            if spec not in self._encoders:
                self._encoders[spec] = load_encoder(spec, device=self.device)
            return self._encoders[spec]

    def store(self, name: str) -> IndexStore:
        from .index_store import IndexStore

        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._stores[name] = IndexStore.open(self.root, name)
            else:
                store.reload_if_changed()
            return store

    def encoder_for(self, store: IndexStore, spec: str | None = None) -> Encoder:
        """The encoder an index was built with (or ``spec``, which must match it)."""
        encoder = self.encoder(spec or store.manifest["encoder"]["spec"])
        store.check_encoder(encoder.identity)
        return encoder

    def list(self) -> list[dict]:
        return list_indexes(self.root)

    def info(self, name: str) -> dict:
        """:meth:`IndexStore.info` of index ``name``, read from its files without opening it where it can be."""
        return describe_from_disk(self.root, name) or self.store(name).info()

    # ----- the defaults of a command that names no index or encoder ----------------------------------------------
    def marked_index(self) -> str | None:
        """The index :data:`DEFAULT_FILE` names, if it still exists."""
        marked = read_json_dict(self.root / DEFAULT_FILE).get("name")
        try:
            return marked if (self.root / validate_name(marked) / MANIFEST).is_file() else None
        except LookalikeError:  # not a name (a hand-edited file): no default
            return None

    def default_index(self) -> str | None:
        """The index marked default if it still exists, else the only index, else None."""
        marked = self.marked_index()
        if marked is not None:
            return marked
        names = [m["name"] for m in self.list()]
        return names[0] if len(names) == 1 else None

    def set_default_index(self, name: str) -> None:
        from .fsutil import atomic_write_json

        if not (self.root / validate_name(name) / MANIFEST).is_file():
            raise IndexNotFoundError(f"no index named {name!r} under {self.root} to make the default")
        atomic_write_json(self.root / DEFAULT_FILE, {"name": name})

    def pick_index(self, name: str | None) -> str:
        """``name``, or the default index when None; a clear error when there is none or several and no default."""
        if name:
            return name
        chosen = self.default_index()
        if chosen is not None:
            return chosen
        names = [m["name"] for m in self.list()]
        if not names:
            raise IndexNotFoundError(f"no indexes under {self.root} yet; build one with 'lookalike index build DIR'")
        raise LookalikeError(f"{len(names)} indexes under {self.root} ({', '.join(names)}) and none is the default: "
                             "name one ('lookalike search NAME IMAGE'), and add --set-default to use it from then on")

    def name_for(self, directory: str | Path) -> str:
        """An index name for ``directory``: its folder name made a valid name; a name an index of another folder
        holds gets -2, -3, … (an index of the same folder keeps the name: rebuilding it needs --overwrite)."""
        folder = Path(directory).expanduser().resolve()
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).lstrip("._-")[:120] or "photos"
        roots = {m["name"]: m.get("root") for m in self.list()}
        name, n = base, 1
        while (self.root / name).exists() and roots.get(name) != str(folder):
            n += 1
            name = f"{base}-{n}"
        return name

    def cached_scorecard(self, name: str, seed: int = 0, sample: int | None = None) -> dict | None:
        """The cached scorecard of index ``name``'s current generation (no model, no FAISS), or None."""
        from .store_files import read_manifest, read_scorecard, validate_name

        directory = self.root / validate_name(name)
        try:
            manifest = read_manifest(directory)
        except FileNotFoundError:
            return None
        return read_scorecard(directory, manifest["generation"], seed, sample)

    def scorecard(self, name: str, seed: int = 0, sample: int | None = None, progress=None) -> dict:
        """The label-free scorecard of index ``name`` (``Scorecard.to_json()``), cached per index generation.

        Computed from the index's own vectors plus edited copies embedded with its encoder
        (:func:`retrieval.scorecard.score_embedded`); ``progress(done, total, stage)`` while it embeds."""
        from .scorecard import score_embedded
        from .store_files import read_scorecard, write_scorecard

        store = self.store(name)
        manifest = store.manifest
        generation = manifest["generation"]
        cached = read_scorecard(store.path, generation, seed, sample)
        if cached is not None:
            return cached
        encoder = self.encoder_for(store)
        paths, vectors = store.vectors()
        root = Path(manifest["root"])
        card = score_embedded(encoder, [str(root / p) for p in paths], vectors, seed=seed, sample=sample,
                              progress=progress).to_json()
        card["generation"] = generation
        write_scorecard(store.path, generation, card, seed, sample)
        return card

    def forget(self, name: str) -> None:
        with self._lock:
            self._stores.pop(name, None)

    # ----- writes --------------------------------------------------------------------------------------------
    def build(self, directory: str | Path, encoder_spec: str, name: str, index_type: str = "auto",
              overwrite: bool = False, batch_size: int = 64, workers: int | None = None, progress: bool = True,
              on_progress: Progress | None = None, ranks: Ranks | None = None, whiten: bool = False,
              whiten_dim: int | None = None, calibrate: bool = True) -> BuildReport | None:
        """Scan ``directory``, embed every good image, write ``root/name``. Bad files are reported, not fatal.

        ``whiten``/``whiten_dim``: learn a PCA-whitening on the collection (:meth:`IndexStore.create`).
        ``calibrate``: calibrate the index's "same photo" threshold (:func:`retrieval.duplicates.calibrate`).

        With ``ranks`` (a ``torchrun`` job, :mod:`retrieval.distributed`) rank 0 scans, every rank embeds its
        shard and rank 0 alone writes the index and gets the report; the other ranks get None."""
        from .collection import scan
        from .distributed import Ranks, encoder_key
        from .index_store import IndexStore

        ranks = ranks or Ranks()
        encoder = self.encoder(encoder_spec)
        ranks.check_same({"encoder": encoder_key(encoder.identity), "folder": str(Path(directory).resolve()),
                          "name": name, "index type": index_type})

        def scan_new() -> Collection:
            collection = scan(directory, labels=True, progress=progress, confine=self.confine)
            if not overwrite and (self.root / name / MANIFEST).exists():
                raise LookalikeError(f"index {name!r} already exists under {self.root}; pass --overwrite to "
                                     f"rebuild it or 'lookalike index refresh {name}' to update it")
            return collection
        collection = ranks.on_main(scan_new)
        result = ranks.embed(encoder, collection, batch_size=batch_size, workers=workers, progress=progress,
                             on_progress=on_progress)
        if result is None:  # a rank other than 0: its vectors went to rank 0, which writes the index
            return None
        by_path = {it.path: it for it in collection.items}
        skipped = collection.skipped + result.skipped
        store = IndexStore.create(self.root, name, encoder.identity, encoder.dim, Path(directory).resolve(),
                                  index_type=index_type, overwrite=overwrite,
                                  items=[by_path[p] for p in result.paths], vectors=result.vectors,
                                  skipped=skipped, whiten=whiten, whiten_dim=whiten_dim)
        if calibrate:
            from .duplicates import calibrate as calibrate_duplicates

            store.set_duplicates(calibrate_duplicates(store, encoder, collection))
        self.forget(name)
        return BuildReport(name, store.count, encoder.dim, encoder.identity, sorted(skipped, key=_by_path),
                           added=len(result.paths), images_per_s=result.images_per_s)

    def add(self, name: str, paths: list[str | Path], progress: bool = True,
            on_progress: Progress | None = None) -> BuildReport:
        """Add (or re-embed) files of the index's collection, given relative to its root or as absolute paths."""
        from .collection import Collection, Skipped, scan

        store = self.store(name)
        root = Path(store.manifest["root"])
        rel = [self._relative(root, p) for p in paths]
        full = scan(root, labels=True, progress=False, confine=self.confine)
        wanted = set(rel)
        items = [it for it in full.items if it.path in wanted]
        skipped = [s for s in full.skipped if s.path in wanted]
        missing = wanted - {it.path for it in items} - {s.path for s in skipped}
        skipped += [Skipped(p, "file not found") for p in sorted(missing)]
        return self._apply(store, Collection(root, items, []), items, [], skipped, progress, on_progress)

    def remove(self, name: str, paths: list[str | Path]) -> BuildReport:
        store = self.store(name)
        root = Path(store.manifest["root"])
        rel = [self._relative(root, p) for p in paths]
        removed = store.remove(rel)
        return BuildReport(name, store.count, store.manifest["dim"], store.manifest["encoder"], removed=removed)

    def refresh(self, name: str, progress: bool = True, on_progress: Progress | None = None) -> BuildReport:
        """Re-scan the collection: embed only new or changed files (size or mtime), drop deleted ones.

        The scan is compared with the index's item table first (sizes and mtimes read from its SQLite file, the
        files it knows never opened): an unchanged folder is answered without opening the FAISS index, building
        the encoder or decoding an image; otherwise the encoder is built only if a file must be embedded."""
        from .collection import scan
        from .store_files import read_known

        manifest, known, skipped = read_known(self.root, name)
        root = Path(manifest["root"])
        if not root.is_dir():
            raise LookalikeError(f"the collection folder of {name!r} ({root}) no longer exists")
        current = scan(root, labels=True, progress=progress, confine=self.confine, known=known)
        if _unchanged(current, known, skipped):
            return BuildReport(name, len(known), manifest["dim"], manifest["encoder"],
                               sorted(current.skipped, key=_by_path))
        store = self.store(name)
        known = {p: (it.size, it.mtime) for p, it in store.items().items()}  # its newest generation
        changed = [it for it in current.items if known.get(it.path) != (it.size, it.mtime)]
        present = {it.path for it in current.items}
        gone = [p for p in known if p not in present]
        return self._apply(store, current, changed, gone, current.skipped, progress, on_progress,
                           replace_skipped=True)

    def _apply(self, store: IndexStore, collection: Collection, to_embed: list[Item], to_remove: list[str],
               skipped: list[Skipped], progress: bool, on_progress: Progress | None,
               replace_skipped: bool = False) -> BuildReport:
        paths, vectors, bad, identity, rate = self._embed(store, collection, to_embed, progress, on_progress)
        by_path = {it.path: it for it in to_embed}
        skipped = skipped + bad
        # Files that no longer decode are dropped from the index too, rather than left with stale vectors.
        to_remove = sorted(set(to_remove) | ({s.path for s in bad} & set(store.items())))
        if not replace_skipped:
            fixed = set(paths)
            skipped = [s for s in store.skipped() if s.path not in fixed and s.path not in by_path] + skipped
        store.update(items=[by_path[p] for p in paths], vectors=vectors, remove=to_remove, skipped=skipped)
        return BuildReport(store.name, store.count, store.dim, identity, sorted(skipped, key=_by_path),
                           added=len(paths), removed=len(to_remove), images_per_s=rate,
                           notes=_whitening_notes(store.manifest))

    def _embed(self, store: IndexStore, collection: Collection, to_embed: list[Item], progress: bool,
               on_progress: Progress | None) -> tuple[list[str], object, list[Skipped], dict, float]:
        """(paths, vectors, skipped, encoder identity, images/s) of ``to_embed``: the index's encoder is built
        (and torch imported) only when there is something to embed."""
        if not to_embed:
            return [], None, [], store.manifest["encoder"], 0.0
        from .embed import embed_collection

        encoder = self.encoder_for(store)
        result = embed_collection(encoder, collection, paths=[it.path for it in to_embed], progress=progress,
                                  on_progress=on_progress)
        return result.paths, result.vectors, result.skipped, encoder.identity, result.images_per_s

    @staticmethod
    def _relative(root: Path, path: str | Path) -> str:
        p = Path(path)
        if p.is_absolute():
            try:
                return p.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                raise LookalikeError(f"{p} is not inside the indexed collection {root}") from None
        return p.as_posix()

    # ----- reads ---------------------------------------------------------------------------------------------
    def search(self, name: str, image, k: int = 10, encoder_spec: str | None = None, qe: int | None = None,
               dba: int | None = None) -> list[Result]:
        """Top-k of ``image`` (path, bytes or PIL image) in index ``name``, best first. ``qe``/``dba``: αQE /
        database-side augmentation over that many neighbours (0: off; None: :data:`SEARCH_DEFAULTS`)."""
        from .embed import embed_query

        if k < 1:
            raise LookalikeError("k must be at least 1")
        store = self.store(name)
        encoder = self.encoder_for(store, encoder_spec)
        vector = embed_query(encoder, image)  # the encoder's vector: a whitened index whitens it itself
        hits = self.search_vectors(store, vector[None, :], k, qe=SEARCH_DEFAULTS["qe"] if qe is None else qe,
                                   dba=SEARCH_DEFAULTS["dba"] if dba is None else dba)[0]
        return [Result(i + 1, h.path, float(h.score), h.label) for i, h in enumerate(hits)]

    # ----- marks and the map learnt from them (retrieval/marks.py) ------------------------------------------------
    def mark(self, name: str, query: str | Path, result: str | Path, right: bool) -> dict:
        """Mark ``result`` (an image of index ``name``) right or wrong for ``query``: an image of the index, or any
        other image file (its vector and content hash are stored). The same pair marked again keeps the latest."""
        from .marks import check_right, item_key, record_mark
        from .store_files import dir_lock

        check_right(right)
        store = self.store(name)
        root = Path(store.manifest["root"])
        rel = self._relative(root, result)
        q_rel = self._item_or_none(store, root, query)
        if q_rel is not None:
            key, entry = item_key(q_rel), {"kind": "item", "path": q_rel}
        else:
            key, entry = self._upload_entry(store, query)
        with dir_lock(store.path):
            return record_mark(store.path, key, entry, rel, right, store.has)

    def _item_or_none(self, store: IndexStore, root: Path, query: str | Path) -> str | None:
        if store.has(Path(query).as_posix()):
            return Path(query).as_posix()
        if Path(query).is_absolute():
            try:
                rel = Path(query).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                return None
            return rel if store.has(rel) else None
        return None

    def _upload_entry(self, store: IndexStore, query: str | Path) -> tuple[str, dict]:
        from .embed import embed_query
        from .fsutil import sha256_file
        from .marks import upload_key
        from .store_state import prepare_vectors

        path = Path(query)
        if not path.is_file():
            raise LookalikeError(f"query {str(query)!r} is neither an image of index {store.name!r} nor a file")
        sha = sha256_file(path)
        vector = prepare_vectors(embed_query(self.encoder_for(store), path), store.dim, "query vector")[0]
        return upload_key(sha), {"kind": "upload", "path": path.name, "sha256": sha,
                                 "vector": [round(float(v), 7) for v in vector]}

    def marks(self, name: str) -> dict:
        """The marks of index ``name`` (each with ``stale``), counts, the sub-folder labels available for learning
        and the learnt map's record in the manifest (None when off)."""
        from .marks import labels_available, read_marks, report

        store = self.store(name)
        rows = report(read_marks(store.path), store.has)
        live = [r for r in rows if not r["stale"]]
        return {"name": name, "marks": rows, "count": len(rows), "stale": len(rows) - len(live),
                "right": sum(r["right"] for r in live), "wrong": sum(not r["right"] for r in live),
                "labels_available": labels_available(it.label for it in store.items().values()),
                "learnt_map": store.manifest.get("learnt_map")}

    def learn_from_marks(self, name: str, use_labels: bool = True) -> dict:
        """Fit the linear map on the index's stored vectors from its marks (and sub-folder labels), store it and
        apply it: later searches go through it, on the query and on a re-projected copy of the index."""
        import numpy as np

        from .fsutil import now_iso
        from .marks import fit_map, label_pairs, mark_pairs, read_marks, upload_vectors, write_map

        store = self.store(name)
        if store.manifest.get("whitening"):
            raise LookalikeError(f"index {name!r} is whitened; learning from marks works on unwhitened indexes for "
                                 "now: rebuild it without --whiten to learn from its marks")
        _, paths, labels, vecs = store.live_ids_vectors()
        data = read_marks(store.path)
        uploads = upload_vectors(data, store.dim)
        keys = list(uploads)
        x = np.concatenate([vecs] + [uploads[k][None, :] for k in keys]) if keys else vecs
        same, diff, stale = mark_pairs(data, {p: i for i, p in enumerate(paths)},
                                       lambda key: len(paths) + keys.index(key) if key in uploads else None)
        same, diff = np.array(same, np.int64).reshape(-1, 2), np.array(diff, np.int64).reshape(-1, 2)
        n_marks = len(same) + len(diff)
        by_label = (np.zeros((0, 2), np.int64),) * 2
        if use_labels and len({lab for lab in labels if lab is not None}) >= 2:
            by_label = label_pairs(labels + [None] * len(keys))
        mean, matrix = fit_map(x, np.concatenate([same, by_label[0]]), np.concatenate([diff, by_label[1]]))
        write_map(store.path, mean, matrix)
        record = {"applied": True, "fitted": now_iso(), "marks_used": n_marks, "marks_stale": stale,
                  "label_pairs": int(len(by_label[0]) + len(by_label[1])), "dim": store.dim}
        store.set_learnt_map(record)
        self._learnt_index(store)  # build the re-projected copy now rather than on the first search
        return record

    def undo_learnt(self, name: str) -> dict:
        """Search with the raw vectors again (the map's file stays until the next fit)."""
        store = self.store(name)
        if (store.manifest.get("learnt_map") or {}).get("applied"):
            store.set_learnt_map(None)
        self._learnt.pop(name, None)
        return {"name": name, "learnt_map": None}

    def search_vectors(self, store: IndexStore, vectors, k: int, qe: int = 0, dba: int = 0):
        """:meth:`IndexStore.search` (with αQE / DBA re-ranking where asked), or through the learnt map where one is
        applied (which takes no re-ranking: asking for both is refused, never half done)."""
        from .marks import apply_map
        from .store_state import prepare_vectors

        learnt = self._learnt_index(store)
        if learnt is None:
            return store.search(vectors, k, qe=qe, dba=dba)
        if qe or dba:
            raise LookalikeError(f"index {store.name!r} searches through the map learnt from its marks, which does "
                                 "not combine with query expansion or DBA: search without them, or undo the map "
                                 f"('lookalike marks {store.name} --undo')")
        _, mean, matrix, index = learnt
        return store.search_other(index, apply_map(mean, matrix, prepare_vectors(vectors, store.dim)), k)

    def _learnt_index(self, store: IndexStore):
        """((uid, generation), mean, matrix, FAISS index) of the applied learnt map, or None; the re-projected
        copy is read from disk when it matches the generation, else rebuilt from the raw vectors and written."""
        import faiss

        from .fsutil import atomic_write_bytes, atomic_write_json
        from .marks import apply_map, read_map
        from .store_files import LEARNT_INDEX, LEARNT_INDEX_OF

        manifest = store.manifest
        record = manifest.get("learnt_map")
        if not (record or {}).get("applied"):
            return None
        key = (manifest.get("uid"), manifest["generation"])
        with self._lock:
            cached = self._learnt.get(store.name)
            if cached is not None and cached[0] == key:
                return cached
            mean, matrix = read_map(store.path, store.dim)
            if read_json_dict(store.path / LEARNT_INDEX_OF) == {"uid": key[0], "generation": key[1]}:
                index = faiss.read_index(str(store.path / LEARNT_INDEX))
            else:
                ids, _, _, vecs = store.live_ids_vectors()
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(matrix.shape[0]))
                if len(ids):
                    index.add_with_ids(apply_map(mean, matrix, vecs), ids)
                atomic_write_bytes(store.path / LEARNT_INDEX, faiss.serialize_index(index).tobytes())
                atomic_write_json(store.path / LEARNT_INDEX_OF, {"uid": key[0], "generation": key[1]})
            self._learnt[store.name] = (key, mean, matrix, index)
            return self._learnt[store.name]

    def resolve(self, name: str, rel_path: str) -> Path:
        """Absolute path of an indexed item, refusing anything that is not one (used to serve files safely)."""
        store = self.store(name)
        if not store.has(rel_path):
            raise LookalikeError(f"{rel_path!r} is not an item of index {name!r}")
        return Path(store.manifest["root"]) / rel_path


def _by_path(s: Skipped) -> str:
    return s.path


def default_encoder() -> tuple[str, str]:
    """(spec, why) of the encoder ``index build`` uses when told none: the packaged pretrained encoder
    (:data:`retrieval.pretrained.DEFAULT_SPEC`) where the ``pretrained`` extra is installed, else
    :data:`FALLBACK_ENCODER`. Imports no torch."""
    from .pretrained import DEFAULT_SPEC, available_pretrained, install_hint

    if DEFAULT_SPEC in available_pretrained():
        return DEFAULT_SPEC, "the pretrained encoder installed here"
    hint = install_hint(DEFAULT_SPEC.partition(":")[2])
    return FALLBACK_ENCODER, f"no pretrained encoder is installed ({hint})"


def _unchanged(current: Collection, known: dict[str, tuple[int, float]], skipped: list[tuple[str, str]]) -> bool:
    """Whether a fresh scan finds exactly the items ``known`` (same sizes and mtimes) and the same skipped files."""
    return (len(current.items) == len(known)
            and all(known.get(it.path) == (it.size, it.mtime) for it in current.items)
            and sorted((s.path, s.reason) for s in current.skipped) == skipped)


def _whitening_notes(manifest: dict) -> list[str]:
    """A refresh keeps the whitening fitted at build; once the items added since reach WHITEN_REFIT_SHARE of those
    it was fitted on, say so (refitting needs every image re-embedded: a whitened index keeps no raw vectors)."""
    from .pipeline import WHITEN_REFIT_SHARE

    fit = manifest.get("whitening")
    if not fit or fit["added_since_fit"] < WHITEN_REFIT_SHARE * fit["fitted_on"]:
        return []
    return [f"the whitening was learned on {fit['fitted_on']} images and {fit['added_since_fit']} were added since: "
            f"rebuild the index ('lookalike index build ... --whiten --overwrite') to learn it again"]


def evaluate_folder(directory: str | Path, encoder: Encoder, progress: bool = True,
                    batch_size: int = 64) -> dict:
    """Leave-one-out retrieval metrics of ``encoder`` on a folder whose sub-folders are labels."""
    import numpy as np

    from .collection import scan
    from .embed import embed_collection
    from .metrics import evaluate_labelled

    collection = scan(directory, labels=True, progress=progress)
    labelled = [it for it in collection.items if it.label is not None]
    if len({it.label for it in labelled}) < 2:
        raise LookalikeError(f"{directory} needs at least two labelled sub-folders of images to evaluate")
    result = embed_collection(encoder, collection, paths=[it.path for it in labelled], batch_size=batch_size,
                              progress=progress)
    label_of = {it.path: it.label for it in labelled}
    labels = np.array([label_of[p] for p in result.paths], dtype=object)
    metrics = evaluate_labelled(result.vectors, labels)
    metrics.update({"count": len(result.paths), "classes": int(len(set(labels))), "encoder": encoder.identity,
                    "skipped": len(collection.skipped) + len(result.skipped)})
    return metrics
