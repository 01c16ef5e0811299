"""The Lookalike web UI (Gradio): Search, Compare, Train, Indexes and Explore tabs over one :class:`Workspace`.

Handlers are methods of :class:`LookalikeApp`, which holds everything a running app shares between requests (the
workspace with its loaded encoders and indexes, the background :class:`~app.jobs.JobManager`, a per-generation cache
of evaluation scores), so two apps in one process never share state. :func:`build_app` lays the components out;
:func:`launch` serves them. Importing this module loads no model and opens no index.

Named API endpoints, for ``gradio_client.Client(url, download_files=False)``:

* ``/search`` (image, index, k) → (gallery, ``[{"rank", "path", "score"}, …]``)
* ``/compare`` (image, indexes, k) → ``{index_name: [{"rank", "path", "score"}, …]}``

Serving safety: results are returned as absolute paths produced by :meth:`Workspace.resolve` (which refuses anything
that is not an item of the index); the server may only read files under the collection roots of the indexes that
existed at launch (``allowed_paths``) and Gradio's own upload cache, where results of collections indexed later are
copied. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import html
import os
import shutil
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gradio as gr
import numpy as np

from retrieval.errors import BadImageError, LookalikeError

from .jobs import FAILED, FINISHED, Job, JobManager

if TYPE_CHECKING:
    from retrieval.workspace import Result, Workspace

METHODS = ("simclr", "moco", "byol", "simsiam", "barlow")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
ENCODER_SUGGESTIONS = ("pixels", "random:resnet10t?size=64", "random:resnet18?size=64&stem=small")
MAX_K = 100
PLOT_POINTS = 1500  # loss-curve points sent per timer tick
MAP_POINTS = 3000  # points drawn on the Explore map (a random sample beyond that)
EVAL_MAX_ITEMS = 20_000  # lazy leave-one-out evaluation is O(N²·dim): skip it for larger indexes
MAX_UPLOAD = "20mb"
NO_INDEX = ("No index yet — build one in the Indexes tab or run "
            "`lookalike index build DIR --encoder pixels --name NAME`.")


# ----- small pure helpers ----------------------------------------------------------------------------------------
def user_errors(fn: Callable) -> Callable:
    """Turn Lookalike's own errors into ``gr.Error`` (a message in the page, no stack trace)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BadImageError as exc:
            raise gr.Error(f"Cannot use that image: {exc.reason}. Upload a JPEG, PNG, WebP, BMP, TIFF or GIF "
                           "file.") from None
        except LookalikeError as exc:
            raise gr.Error(str(exc)) from None

    return wrapper


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def short_time(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(str(iso)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """(N, D) → (N, 2) coordinates on the two principal axes (eigen-decomposition of the smaller Gram matrix)."""
    x = np.asarray(vectors, np.float64)
    x = x - x.mean(axis=0, keepdims=True)  # (N, D)
    n, d = x.shape
    if n < 2:
        return np.zeros((n, 2))
    if d <= n:
        _, evecs = np.linalg.eigh(x.T @ x)  # (D, D), ascending eigenvalues
        coords = x @ evecs[:, ::-1][:, :2]  # (N, 2)
    else:
        evals, evecs = np.linalg.eigh(x @ x.T)  # (N, N)
        top = evecs[:, ::-1][:, :2]
        coords = top * np.sqrt(np.clip(evals[::-1][:2], 0, None))  # (N, 2)
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def near_duplicate_pairs(paths: Sequence[str], vectors: np.ndarray, search: Callable[[np.ndarray, int], list],
                         threshold: float, neighbours: int = 5, batch: int = 1024,
                         max_pairs: int = 1000) -> list[tuple[float, str, str]]:
    """Pairs of items with cosine ≥ ``threshold``, best first, found by k-NN in batches (never an N×N matrix).

    ``search(queries (B, D), k)`` returns, per query, hits with ``.path`` and ``.score`` (``IndexStore.search``);
    each item looks at its ``neighbours`` nearest others, so a group of more than ``neighbours + 1`` identical
    images still shows up, as a chain of pairs.
    """
    best: dict[tuple[str, str], float] = {}
    k = min(neighbours + 1, len(paths))
    for start in range(0, len(paths), batch):
        hits_per_query = search(vectors[start:start + batch], k)
        for a, hits in zip(paths[start:start + batch], hits_per_query):
            for hit in hits:
                if hit.path == a or hit.score < threshold:
                    continue
                key = (a, hit.path) if a < hit.path else (hit.path, a)
                best[key] = max(best.get(key, -1.0), float(hit.score))
    pairs = sorted(((s, a, b) for (a, b), s in best.items()), key=lambda t: (-t[0], t[1], t[2]))
    return pairs[:max_pairs]


def _job_progress_html(fraction: float | None, text: str) -> str:
    if fraction is None:
        return f"<div class='lk-progress'><progress style='width:100%'></progress><div>{html.escape(text)}</div></div>"
    pct = max(0.0, min(1.0, fraction))
    return (f"<div class='lk-progress'><progress value='{pct:.4f}' max='1' style='width:100%'></progress>"
            f"<div>{pct * 100:.0f}% · {html.escape(text)}</div></div>")


def _mmss(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def query_source(image: Any, upload_dir: str | Path | None = None) -> str | bytes | None:
    """The query as the image input sends it (events run with ``preprocess=False``) → a file path or bytes.

    Gradio's own preprocessing opens every upload with Pillow before the handler runs, so a broken or non-image
    file would fail with Pillow's exception rather than Lookalike's reason; decoding (EXIF, modes, size limit)
    is the retrieval package's job. A path is only accepted inside Gradio's upload folder (``upload_dir``), where
    uploads, webcam shots, examples and clicked results all land: Gradio checks file payloads marked as such, but
    a bare ``{"path": …}`` sent to the API would otherwise name any file on the server.
    """
    if image is None:
        return None
    if isinstance(image, dict):
        if not image.get("path"):
            url = image.get("url") or ""
            if url.startswith("data:") and "," in url:
                try:
                    return base64.b64decode(url.split(",", 1)[1], validate=False)
                except (ValueError, binascii.Error):
                    raise BadImageError("not an image") from None
            return None
        image = image["path"]
    if isinstance(image, bytes):
        return image or None
    if not isinstance(image, (str, Path)) or not str(image):
        return None
    if upload_dir is None:
        from gradio.utils import get_upload_folder

        upload_dir = get_upload_folder()
    refusal = LookalikeError("the query image must be uploaded to this app (upload, paste or webcam)")
    try:
        path = Path(image).resolve()  # ValueError for an embedded NUL, OSError for a name the OS rejects
    except (ValueError, OSError):
        raise refusal from None
    if not path.is_relative_to(Path(upload_dir).resolve()):
        raise refusal
    return str(path)


# ----- the app -------------------------------------------------------------------------------------------------
class LookalikeApp:
    """Everything one running UI shares between requests, and every handler."""

    def __init__(self, workspace: "Workspace", jobs: JobManager | None = None, examples: list[str] | None = None,
                 train_dirs: list[str] | None = None, runs_dir: str | Path = "runs",
                 allowed_paths: list[str] | None = None):
        self.ws = workspace
        self.jobs = jobs or JobManager()
        self.examples = [str(p) for p in (examples or [])]
        self.train_dirs = [str(p) for p in (train_dirs or [])]
        self.runs_dir = Path(runs_dir)
        # The folders handed to launch(allowed_paths=…): the collection roots of the indexes that existed then.
        self.allowed_paths: list[str] = list(allowed_paths or [])
        self._allowed_roots = [Path(p).resolve() for p in self.allowed_paths]
        self._metrics: dict[tuple, dict | None] = {}
        self._lock = threading.Lock()

    # ----- shared lookups -----
    def index_names(self) -> list[str]:
        return [m["name"] for m in self.ws.list()]

    def collection_roots(self) -> list[str]:
        roots = []
        for m in self.ws.list():
            root = str(Path(m["root"]).resolve())
            if root not in roots:
                roots.append(root)
        return roots

    def servable(self, path: Path) -> str:
        """A path Gradio will serve for ``path`` (an item already checked by ``Workspace.resolve``).

        Items under a launch-time collection root are served as they are. Items of a collection indexed while the
        app runs are copied into an app folder inside Gradio's upload folder instead of widening ``allowed_paths``
        at run time: a folder picked in the page must not make every file under it downloadable.
        """
        path = path.resolve()
        if any(path.is_relative_to(root) for root in self._allowed_roots):
            return str(path)
        from gradio.utils import get_upload_folder

        st = path.stat()
        key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
        dest = Path(get_upload_folder()) / "lookalike-results" / key / path.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return str(dest)

    def _require_index(self, name: str | None) -> str:
        names = self.index_names()
        if not names:
            raise gr.Error(NO_INDEX)
        if not name:
            raise gr.Error("Choose an index first.")
        if name not in names:
            raise gr.Error(f"No index named {name!r}; available: {', '.join(names)}.")
        return name

    @staticmethod
    def _require_image(image: Any) -> str | bytes:
        source = query_source(image)
        if not source:
            raise gr.Error("Upload, paste or pick a query image first.")
        return source

    @staticmethod
    def _k(k) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise gr.Error(f"k must be a whole number, got {k!r}") from None
        if not 1 <= k <= MAX_K:
            raise gr.Error(f"k must be between 1 and {MAX_K}")
        return k

    def _gallery(self, name: str, results: list["Result"]) -> list[tuple[str, str]]:
        return [(self.servable(self.ws.resolve(name, r.path)), f"{r.score:.3f} · {r.path}") for r in results]

    # ----- Search -----
    @user_errors
    def search(self, image: dict | str | None, index: str | None, k: float = 10):
        """Top-k of the query image in one index → (gallery, JSON results, absolute paths for click-to-search)."""
        name = self._require_index(index)
        path = self._require_image(image)
        results = self.ws.search(name, path, k=self._k(k))
        gallery = self._gallery(name, results)
        return gallery, [r.to_json() for r in results], [g[0] for g in gallery]

    @user_errors
    def search_if_ready(self, image, index, k):
        """The same search, fired by changing the query, index or k; quiet while something is still missing."""
        if not query_source(image) or not index:
            return [], [], []
        return self.search(image, index, k)

    @staticmethod
    def pick_result(paths: list[str] | None, evt: gr.SelectData):
        """A click on a result makes it the query (whose change event then searches)."""
        if not paths or not isinstance(evt.index, int) or not 0 <= evt.index < len(paths):
            return gr.skip()
        return paths[evt.index]

    # ----- Compare -----
    def metrics_for(self, name: str) -> dict | None:
        """Evaluation scores of an index: its manifest's ``metrics``, else leave-one-out over its labelled items.

        Computed once per index generation (a rebuilt or refreshed index is evaluated again). None when the items
        carry fewer than two labels or the index is too large to evaluate on the fly.
        """
        store = self.ws.store(name)
        manifest = store.manifest
        if isinstance(manifest.get("metrics"), dict):
            return manifest["metrics"]
        key = (name, manifest.get("uid"), manifest.get("generation"), manifest.get("updated"), store.count)
        with self._lock:
            if key in self._metrics:
                return self._metrics[key]
        result = None
        if store.count > EVAL_MAX_ITEMS:
            result = {"note": f"not evaluated on the fly ({store.count} images; use `lookalike eval`)"}
        elif store.count > 2:
            from retrieval.metrics import evaluate_labelled

            items = store.items()
            paths, vectors = store.vectors()
            labels = [items[p].label if p in items else None for p in paths]
            keep = [i for i, lab in enumerate(labels) if lab is not None]
            if len({labels[i] for i in keep}) >= 2:
                result = evaluate_labelled(vectors[keep], [labels[i] for i in keep])
                result["count"] = len(keep)
        with self._lock:
            for old in [k for k in self._metrics if k[0] == name]:  # keep one generation per index
                del self._metrics[old]
            self._metrics[key] = result
        return result

    @staticmethod
    def metrics_text(metrics: dict | None) -> str:
        if not metrics:
            return "not evaluated (its images have no labels)"
        if "note" in metrics:
            return str(metrics["note"])
        shown = [(k, metrics[k]) for k in ("recall@1", "map@10", "knn_acc") if isinstance(metrics.get(k), float)]
        text = " · ".join(f"{k} {v:.3f}" for k, v in shown)
        if "count" in metrics:
            text += f" (leave-one-out, {metrics['count']} labelled images)"
        return text

    def _compare_names(self, indexes: Sequence[str] | str | None) -> list[str]:
        available = self.index_names()
        if not available:
            raise gr.Error(NO_INDEX)
        if isinstance(indexes, str):
            indexes = [indexes]
        names = list(dict.fromkeys(indexes or available))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise gr.Error(f"No index named {', '.join(map(repr, unknown))}; available: {', '.join(available)}.")
        return names

    @user_errors
    def compare(self, image: dict | str | None, indexes: list[str] | None, k: float = 5):
        """One query against several indexes → ({name: results JSON}, column data for the page)."""
        from retrieval.encoders import describe_identity

        names = self._compare_names(indexes)
        path = self._require_image(image)
        k = self._k(k)
        out, columns = {}, []
        for name in names:
            results = self.ws.search(name, path, k=k)
            out[name] = [r.to_json() for r in results]
            store = self.ws.store(name)
            columns.append({"name": name, "encoder": describe_identity(store.manifest["encoder"]),
                            "metrics": self.metrics_text(self.metrics_for(name)),
                            "items": self._gallery(name, results)})
        return out, columns

    # ----- Indexes -----
    def index_rows(self) -> list[list]:
        from retrieval.encoders import describe_identity

        rows = []
        for m in self.ws.list():
            try:
                info = self.ws.store(m["name"]).info()
            except LookalikeError as exc:
                rows.append([m["name"], None, f"unreadable: {exc}", m.get("index_type", ""), "", "", None])
                continue
            skipped = info.get("skipped", 0)
            rows.append([info["name"], info.get("count", 0), describe_identity(info["encoder"]),
                         info.get("index_type", ""), human_bytes(info.get("size_bytes", 0)),
                         short_time(info.get("updated")), len(skipped) if isinstance(skipped, list) else skipped])
        return rows

    @user_errors
    def index_details(self, name: str | None):
        """Root, encoder and skipped files (with reasons) of one index."""
        if not name:
            return "", []
        name = self._require_index(name)
        store = self.ws.store(name)
        info = store.info()
        skipped = store.skipped()
        text = (f"**{name}** — {info.get('count', 0)} images from `{info['root']}`  \n"
                f"encoder `{info['encoder'].get('spec')}` · {info.get('index_type')} (`{info.get('factory', '')}`)"
                f" · dim {info.get('dim')} · updated {short_time(info.get('updated'))}  \n"
                + (f"{len(skipped)} file(s) skipped:" if skipped else "no skipped files"))
        return text, [[s.path, s.reason] for s in skipped]

    def select_index_row(self, rows, evt: gr.SelectData):
        row = evt.row_value if getattr(evt, "row_value", None) else None
        if row is None and isinstance(evt.index, (list, tuple)) and rows is not None:
            try:
                row = list(rows.iloc[evt.index[0]]) if hasattr(rows, "iloc") else rows[evt.index[0]]
            except (IndexError, KeyError):
                row = None
        name = str(row[0]) if row else None
        text, skipped = self.index_details(name)
        return text, skipped, (name or gr.skip())

    def encoder_choices(self) -> list[str]:
        runs = sorted(str(p.parent) for p in self.runs_dir.glob("*/encoder.json")) if self.runs_dir.is_dir() else []
        return list(dict.fromkeys([*ENCODER_SUGGESTIONS, *runs]))

    def encoder_dropdown(self, current: str | None = None):
        """Encoder suggestions, including training runs finished since the page was built."""
        return gr.Dropdown(choices=self.encoder_choices(), value=current or "pixels")

    @user_errors
    def build_index(self, folder: str, encoder_spec: str, name: str, index_type: str = "auto",
                    overwrite: bool = False, progress=gr.Progress()):
        folder = (folder or "").strip()
        name = (name or "").strip()
        encoder_spec = (encoder_spec or "").strip()
        if not folder or not Path(folder).expanduser().is_dir():
            raise gr.Error(f"Folder {folder!r} does not exist; give the path of a folder of images on this machine.")
        if not name:
            raise gr.Error("Give the new index a name (letters, digits, '.', '_' or '-').")
        if not encoder_spec:
            raise gr.Error("Choose an encoder: pixels, random:NAME, timm:NAME or a training run directory.")
        folder_path = Path(folder).expanduser().resolve()
        progress(0, desc="loading encoder and scanning")
        report = self.ws.build(folder_path, encoder_spec, name, index_type=index_type or "auto",
                               overwrite=bool(overwrite), progress=False,
                               on_progress=lambda done, total: progress((done, total), desc="embedding",
                                                                        unit="images"))
        msg = (f"Built **{report.name}**: {report.count} images ({report.images_per_s:.0f} images/s)"
               + (f", {len(report.skipped)} skipped" if report.skipped else "") + ".")
        gr.Info(f"Index {report.name} built: {report.count} images")
        return msg, self.index_rows()

    @user_errors
    def refresh_index(self, name: str | None, progress=gr.Progress()):
        name = self._require_index(name)
        progress(0, desc="scanning")
        report = self.ws.refresh(name, progress=False,
                                 on_progress=lambda done, total: progress((done, total), desc="embedding",
                                                                          unit="images"))
        msg = (f"Refreshed **{name}**: {report.count} images (+{report.added} −{report.removed})"
               + (f", {len(report.skipped)} skipped" if report.skipped else "") + ".")
        return msg, self.index_rows()

    def dropdown_updates(self, search_value=None, compare_value=None, refresh_value=None, explore_value=None):
        """New choices for every index picker, keeping each current choice while it still exists."""
        names = self.index_names()

        def one(value):
            return gr.Dropdown(choices=names, value=value if value in names else (names[0] if names else None))

        kept = [n for n in (compare_value or []) if n in names]
        return (one(search_value), gr.Dropdown(choices=names, value=kept or names), one(refresh_value),
                one(explore_value))

    # ----- Explore -----
    @user_errors
    def explore_map(self, name: str | None, max_points: float = MAP_POINTS):
        import pandas as pd

        name = self._require_index(name)
        store = self.ws.store(name)
        paths, vectors = store.vectors()
        if len(paths) < 3:
            raise gr.Error(f"Index {name!r} has {len(paths)} image(s); a map needs at least 3.")
        rng = np.random.default_rng(0)
        n = int(max_points or MAP_POINTS)
        sel = np.sort(rng.choice(len(paths), n, replace=False)) if len(paths) > n else np.arange(len(paths))
        coords = pca_2d(vectors[sel])
        items = store.items()
        labels = [(items[paths[i]].label if paths[i] in items else None) for i in sel]
        has_labels = any(lab is not None for lab in labels)
        df = pd.DataFrame({"x": coords[:, 0].round(4), "y": coords[:, 1].round(4),
                           "label": [lab or "(none)" for lab in labels], "path": [paths[i] for i in sel]})
        caption = (f"{len(sel)} of {len(paths)} images, first two principal components of the embeddings"
                   + (", coloured by label (sub-folder)" if has_labels else ""))
        return gr.ScatterPlot(value=df, x="x", y="y", color="label", tooltip=["path", "label"], caption=caption)

    @user_errors
    def near_duplicates(self, name: str | None, threshold: float = 0.95, neighbours: float = 5):
        name = self._require_index(name)
        store = self.ws.store(name)
        paths, vectors = store.vectors()
        if len(paths) < 2:
            return "Fewer than two images: nothing to compare.", [], []
        pairs = near_duplicate_pairs(paths, vectors, store.search, float(threshold), neighbours=int(neighbours))
        gallery = []
        for i, (score, a, b) in enumerate(pairs[:24], start=1):
            gallery.append((self.servable(self.ws.resolve(name, a)), f"#{i} {score:.3f} · {a}"))
            gallery.append((self.servable(self.ws.resolve(name, b)), f"#{i} {score:.3f} · {b}"))
        summary = (f"{len(pairs)} pair(s) with cosine ≥ {float(threshold):.3f} among {len(paths)} images"
                   + (" (showing the first 24 as images)" if len(pairs) > 24 else ""))
        return summary, [[round(s, 4), a, b] for s, a, b in pairs], gallery

    # ----- Train -----
    @user_errors
    def start_training(self, folder: str, method: str, backbone: str, image_size: float, batch_size: float,
                       minutes: float, stem: str):
        from training.trainer import TrainConfig

        folder = (folder or "").strip()
        if not folder or not Path(folder).expanduser().is_dir():
            raise gr.Error(f"Folder {folder!r} does not exist; give the path of a folder of images to train on.")
        if method not in METHODS:
            raise gr.Error(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        if not minutes or float(minutes) <= 0:
            raise gr.Error("Give a time budget in minutes (e.g. 5).")
        backbone = (backbone or "resnet10t").strip()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        wanted = {"data_dir": str(Path(folder).expanduser().resolve()), "method": method, "backbone": backbone,
                  "image_size": int(image_size), "batch_size": int(batch_size), "minutes": float(minutes),
                  "stem": stem, "out": str(self.runs_dir / f"{method}-{backbone}-{stamp}"),
                  "log_every": 1}  # a point on the live loss curve every step
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            config = TrainConfig(**{k: v for k, v in wanted.items() if k in known})
            if hasattr(config, "validate"):
                config.validate()  # bad settings fail here, in the page, not later in the background
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        job = self.jobs.run_training(config, label=f"{method} · {backbone} on {Path(folder).name}")
        return job.id, gr.Timer(active=True), f"Started {job.title}."

    def stop_job(self, job_id: str | None):
        if job_id and self.jobs.stop(job_id):
            return "Stopping — the trainer saves a checkpoint first…"
        return gr.skip()

    @user_errors
    def build_from_run(self, train_id: str | None, name: str):
        job = self.jobs.get(train_id)
        if job is None or not job.finished_ok:
            raise gr.Error("Train an encoder first (or wait for the running training to finish).")
        run_dir = Path(job.result)
        folder = job.meta.get("data_dir")
        name = (name or "").strip() or run_dir.name
        if not folder:
            raise gr.Error("The training job does not say which folder it trained on.")

        def work(build: Job):
            build.say(f"indexing {folder} with {run_dir.name}")
            return self.ws.build(folder, str(run_dir), name, progress=False, on_progress=build.progress)

        build = self.jobs.start("build", f"index {name} from {run_dir.name}", work)
        return build.id, gr.Timer(active=True), f"Building index {name}…"

    def poll(self, train_id: str | None, build_id: str | None, announced: str | None):
        """One timer tick: loss curve, progress and buttons of the training job, then of the index build.

        Returns the training job shown (it may move on to a newer one), its curve, status, progress bar, Stop
        and "build index" states, the build's status, the timer's state, the last build announced, and the four
        index pickers (updated once when a build finishes).
        """
        import pandas as pd

        train = self.jobs.get(train_id)
        latest = self.jobs.latest("train")
        if latest is not None and (train is None or (train.status in FINISHED and latest is not train)):
            train = latest  # follow a newer run (the demo trains several encoders one after another)
        build = self.jobs.get(build_id)
        # Keep ticking while anything runs in the background, so the next run of a sequence shows up too.
        running = any(j.status not in FINISHED for j in self.jobs.list())
        plot = gr.skip()
        status, bar = "No training yet.", ""
        stop_btn, build_row = gr.Button(interactive=False), gr.Column(visible=False)
        if train is not None:
            snap = train.snapshot()
            pts = [(r["step"], r["loss"]) for r in snap["records"]
                   if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))]
            if len(pts) > PLOT_POINTS:  # keep each tick's payload small on long runs; always show the last point
                pts = pts[:: -(-len(pts) // PLOT_POINTS)] + pts[-1:]
            # Typed columns even when empty: the plot fixes each axis's type (numeric or categorical) from the
            # first value it gets, and an empty object column would make the loss axis categorical for good.
            plot = pd.DataFrame({"step": np.array([p[0] for p in pts], np.float64),
                                 "loss": np.array([p[1] for p in pts], np.float64)})
            status, bar = self._train_status(train, snap)
            stop_btn = gr.Button(interactive=snap["status"] not in FINISHED and not snap["stopping"])
            build_row = gr.Column(visible=train.finished_ok)
        build_text = ""
        dropdowns = (gr.skip(),) * 4
        if build is not None:
            snap = build.snapshot()
            if snap["status"] == FAILED:
                build_text = f"Index build failed: {snap['error']}"
            elif snap["status"] in FINISHED:
                r = snap["result"]
                build_text = (f"Index **{r.name}** ready: {r.count} images. Pick it in the Search or Compare tab."
                              if r is not None else "Index build stopped.")
                if announced != build.id and r is not None:
                    dropdowns = self.dropdown_updates(r.name, None, r.name, r.name)  # select the new index
                    announced = build.id
            else:
                build_text = _job_progress_html(snap["done"] / snap["total"] if snap["total"] else None,
                                                f"{snap['message']} — {snap['done']}/{snap['total']} images")
        return (train.id if train else None, plot, status, bar, stop_btn, build_row, build_text,
                gr.Timer(active=running), announced, *dropdowns)

    @staticmethod
    def _train_status(job: Job, snap: dict) -> tuple[str, str]:
        last = next((r for r in reversed(snap["records"]) if "loss" in r), {})
        parts = [f"**{snap['title']}** — {snap['status']}" + (" (stopping…)" if snap["stopping"]
                                                                 and snap["status"] not in FINISHED else "")]
        for key, fmt in (("epoch", "epoch {:.2f}"), ("step", "step {}"), ("loss", "loss {:.4f}"),
                         ("lr", "lr {:.2e}"), ("images_per_s", "{:.1f} images/s")):
            if isinstance(last.get(key), (int, float)):
                parts.append(fmt.format(last[key]))
        knn = next((r["knn_acc"] for r in reversed(snap["records"]) if isinstance(r.get("knn_acc"), float)), None)
        if knn is not None:
            parts.append(f"kNN accuracy {knn:.3f}")
        minutes = job.meta.get("minutes")
        elapsed = snap["elapsed"]
        parts.append(_mmss(elapsed) + (f" / {_mmss(minutes * 60)}" if minutes else ""))
        if snap["status"] == FAILED:
            return f"Training failed: {snap['error']}", ""
        if snap["status"] in FINISHED:
            parts.append(f"encoder saved to `{snap['result']}`" if snap["result"] else "")
            return "  \n".join([parts[0], " · ".join(p for p in parts[1:] if p)]), _job_progress_html(1.0, "done")
        fraction = None
        if isinstance(last.get("progress"), (int, float)):
            fraction = float(last["progress"])
        elif minutes:
            fraction = min(0.99, elapsed / (minutes * 60))
        return "  \n".join([parts[0], " · ".join(parts[1:])]), _job_progress_html(fraction, "training")

    def resume_jobs(self):
        """On page load, re-attach to the latest training (and build) so a reload does not lose the live view."""
        train = self.jobs.latest("train")
        build = self.jobs.latest("build")
        active = any(j.status not in FINISHED for j in self.jobs.list())
        return (train.id if train else None, build.id if build else None, gr.Timer(active=active))


# ----- layout ----------------------------------------------------------------------------------------------------
CSS = """
.lk-progress progress { height: 14px; }
.lk-note { color: var(--body-text-color-subdued); font-size: 0.9em; }
#search-query img, #compare-query img { width: 100%; height: 100%; object-fit: contain; }
"""


def build_app(workspace: "Workspace", examples: list[str] | None = None, train_dirs: list[str] | None = None,
              jobs: JobManager | None = None, runs_dir: str | Path = "runs",
              allowed_paths: list[str] | None = None) -> gr.Blocks:
    """Lay out the five tabs over ``workspace``. Nothing is loaded until a handler runs."""
    app = LookalikeApp(workspace, jobs, examples, train_dirs, runs_dir, allowed_paths)
    names = app.index_names()
    first = names[0] if names else None

    with gr.Blocks(title="Lookalike", analytics_enabled=False) as demo:
        demo.lookalike = app  # for tests and embedding callers
        gr.Markdown("## Lookalike — find similar images in your own collection")
        with gr.Tabs():
            # ---------------------------------------------------------------- Search
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        query = gr.Image(type="filepath", label="Query image", height=280, elem_id="search-query",
                                         sources=["upload", "webcam", "clipboard"])
                        with gr.Row():
                            s_index = gr.Dropdown(names, value=first, label="Index", allow_custom_value=True,
                                                  scale=4, elem_id="search-index")
                            s_reload = gr.Button("↻", scale=0, min_width=40, size="sm")
                        s_k = gr.Slider(1, 50, value=10, step=1, label="k (results)")
                        s_btn = gr.Button("Search", variant="primary", elem_id="search-button")
                        if app.examples:
                            gr.Examples(examples=[[p] for p in app.examples], inputs=[query], label="Examples")
                    with gr.Column(scale=2):
                        s_gallery = gr.Gallery(label="Most similar (click one to search with it)", columns=5,
                                               height=560, object_fit="contain", allow_preview=False,
                                               elem_id="search-results")
                        with gr.Accordion("Results as JSON", open=False):
                            s_json = gr.JSON(label="results")
                s_paths = gr.State([])
                s_out = [s_gallery, s_json, s_paths]
                # preprocess=False: the handler gets the upload undecoded (see query_source).
                s_btn.click(app.search, [query, s_index, s_k], s_out, api_name="search", preprocess=False)
                for trigger in (query.change, s_index.change, s_k.release):
                    trigger(app.search_if_ready, [query, s_index, s_k], s_out, api_visibility="private",
                            trigger_mode="always_last", preprocess=False)
                s_gallery.select(app.pick_result, [s_paths], [query], api_visibility="private")

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        c_query = gr.Image(type="filepath", label="Query image", height=220, elem_id="compare-query",
                                           sources=["upload", "webcam", "clipboard"])
                        if app.examples:
                            gr.Examples(examples=[[p] for p in app.examples], inputs=[c_query], label="Examples")
                    with gr.Column(scale=2):
                        c_indexes = gr.Dropdown(names, value=names, multiselect=True, allow_custom_value=True,
                                                label="Indexes (one column each)", elem_id="compare-indexes")
                        with gr.Row():
                            c_k = gr.Slider(1, 20, value=5, step=1, label="k per index", scale=3)
                            c_reload = gr.Button("↻ all indexes", scale=1, size="sm")
                        c_btn = gr.Button("Compare", variant="primary", elem_id="compare-button")
                c_columns = gr.State(None)
                with gr.Accordion("Results as JSON", open=False):
                    c_json = gr.JSON(label="results by index")
                c_btn.click(app.compare, [c_query, c_indexes, c_k], [c_json, c_columns], api_name="compare",
                            preprocess=False)

                @gr.render(inputs=c_columns)
                def _compare_columns(columns):
                    if not columns:
                        gr.Markdown("Pick a query and press Compare: each index gets a column, headed by its "
                                    "encoder and its evaluation scores.", elem_classes=["lk-note"])
                        return
                    with gr.Row(equal_height=False, elem_id="compare-columns"):
                        for col in columns:
                            with gr.Column(min_width=180):
                                gr.Markdown(f"**{col['name']}**  \n{col['encoder']}  \n"
                                            f"<span class='lk-note'>{col['metrics']}</span>")
                                gr.Gallery(col["items"], columns=max(1, min(3, 6 // len(columns))), height="auto",
                                           object_fit="contain", show_label=False, allow_preview=True,
                                           elem_classes=["compare-gallery"])

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                gr.Markdown("Train an encoder on a folder of images without labels. The run directory it writes "
                            "can then be indexed and compared with the baselines.", elem_classes=["lk-note"])
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        dirs = list(dict.fromkeys(app.train_dirs + app.collection_roots()))
                        t_folder = gr.Dropdown(dirs, value=dirs[0] if dirs else None, allow_custom_value=True,
                                               label="Image folder")
                        t_method = gr.Dropdown(list(METHODS), value="simclr", label="Method")
                        t_backbone = gr.Textbox("resnet10t", label="Backbone (timm name)")
                        with gr.Row():
                            t_size = gr.Number(64, label="Image size", precision=0, minimum=16)
                            t_batch = gr.Number(64, label="Batch size", precision=0, minimum=2)
                        with gr.Row():
                            t_minutes = gr.Number(5, label="Minutes budget", minimum=0.1)
                            t_stem = gr.Dropdown(["small", "default"], value="small", label="Stem",
                                                 info="small: for images under ~128 px")
                        with gr.Row():
                            t_start = gr.Button("Start training", variant="primary")
                            t_stop = gr.Button("Stop", variant="stop", interactive=False)
                    with gr.Column(scale=2):
                        t_status = gr.Markdown("No training yet.")
                        t_bar = gr.HTML("")
                        t_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=280,
                                             x_title="step", y_title="loss", y_axis_format=".3~g")
                        with gr.Column(visible=False) as t_build_row:
                            with gr.Row():
                                t_index_name = gr.Textbox(label="Index name (default: the run's name)", scale=3)
                                t_build = gr.Button("Build index from this encoder", scale=2)
                        t_build_status = gr.Markdown("")
                t_job = gr.State(None)
                t_build_job = gr.State(None)
                t_announced = gr.State(None)
                timer = gr.Timer(1.0, active=False)

            # ---------------------------------------------------------------- Indexes
            with gr.Tab("Indexes", id="indexes"):
                i_table = gr.Dataframe(headers=["name", "images", "encoder", "type", "size", "updated", "skipped"],
                                       interactive=False, label="Indexes (click a row for its skipped files)",
                                       elem_id="index-table")
                with gr.Row():
                    i_reload = gr.Button("↻ Reload list", size="sm")
                i_details = gr.Markdown("")
                i_skipped = gr.Dataframe(headers=["path", "reason"], interactive=False, label="Skipped files",
                                         max_height=300)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Build a new index**")
                        b_folder = gr.Textbox(label="Image folder (path on this machine)",
                                              value=app.train_dirs[0] if app.train_dirs else "")
                        b_encoder = gr.Dropdown(app.encoder_choices(), value="pixels", allow_custom_value=True,
                                                label="Encoder", info="pixels | random:NAME | timm:NAME | runs/RUN")
                        with gr.Row():
                            b_name = gr.Textbox(label="Index name")
                            b_type = gr.Dropdown(list(INDEX_TYPES), value="auto", label="Index type")
                        b_overwrite = gr.Checkbox(False, label="Replace an existing index of that name")
                        b_btn = gr.Button("Build index", variant="primary")
                        b_status = gr.Markdown("")
                    with gr.Column():
                        gr.Markdown("**Refresh an index** (embed new or changed files, drop deleted ones)")
                        r_name = gr.Dropdown(names, value=first, label="Index", allow_custom_value=True)
                        r_btn = gr.Button("Refresh")
                        r_status = gr.Markdown("")

            # ---------------------------------------------------------------- Explore
            with gr.Tab("Explore", id="explore"):
                with gr.Row():
                    e_index = gr.Dropdown(names, value=first, label="Index", allow_custom_value=True, scale=3)
                    e_points = gr.Slider(100, 10_000, value=MAP_POINTS, step=100, label="Points on the map",
                                         scale=2)
                    e_map_btn = gr.Button("Show map", variant="primary", scale=1)
                e_map = gr.ScatterPlot(x="x", y="y", color="label", label="Embedding map (PCA)",
                                       tooltip=["path", "label"], elem_id="explore-map")
                gr.Markdown("**Near duplicates** — pairs whose embeddings have cosine similarity above the "
                            "threshold (nearest-neighbour search in batches).")
                with gr.Row():
                    e_threshold = gr.Slider(0.5, 1.0, value=0.95, step=0.005, label="Cosine threshold", scale=3)
                    e_neighbours = gr.Slider(1, 50, value=5, step=1, label="Neighbours per image", scale=2)
                    e_dup_btn = gr.Button("Find near duplicates", scale=1)
                e_summary = gr.Markdown("")
                with gr.Row():
                    e_pairs = gr.Dataframe(headers=["cosine", "image a", "image b"], interactive=False,
                                           max_height=420, scale=1)
                    e_gallery = gr.Gallery(label="Pairs (a, b side by side)", columns=4, height=420,
                                           object_fit="contain", scale=1)

        # ----- wiring that spans tabs -----
        pickers = [s_index, c_indexes, r_name, e_index]
        refresh_pickers = dict(fn=app.dropdown_updates, inputs=pickers, outputs=pickers, api_visibility="private")
        for btn in (s_reload, i_reload):
            btn.click(**refresh_pickers)
        c_reload.click(lambda: app.dropdown_updates()[1], None, [c_indexes], api_visibility="private")
        i_reload.click(app.index_rows, None, [i_table], api_visibility="private")
        demo.load(**refresh_pickers)
        demo.load(app.index_rows, None, [i_table], api_visibility="private")
        for event in (demo.load, i_reload.click):
            event(app.encoder_dropdown, [b_encoder], [b_encoder], api_visibility="private")

        i_table.select(app.select_index_row, [i_table], [i_details, i_skipped, r_name], api_visibility="private")
        b_btn.click(app.build_index, [b_folder, b_encoder, b_name, b_type, b_overwrite], [b_status, i_table],
                    api_visibility="private").success(**refresh_pickers)
        r_btn.click(app.refresh_index, [r_name], [r_status, i_table], api_visibility="private")

        e_map_btn.click(app.explore_map, [e_index, e_points], [e_map], api_visibility="private")
        e_dup_btn.click(app.near_duplicates, [e_index, e_threshold, e_neighbours], [e_summary, e_pairs, e_gallery],
                        api_visibility="private")

        t_start.click(app.start_training, [t_folder, t_method, t_backbone, t_size, t_batch, t_minutes, t_stem],
                      [t_job, timer, t_status], api_visibility="private")
        t_stop.click(app.stop_job, [t_job], [t_status], api_visibility="private")
        t_build.click(app.build_from_run, [t_job, t_index_name], [t_build_job, timer, t_build_status],
                      api_visibility="private")
        timer.tick(app.poll, [t_job, t_build_job, t_announced],
                   [t_job, t_plot, t_status, t_bar, t_stop, t_build_row, t_build_status, timer, t_announced, *pickers],
                   api_visibility="private", show_progress="hidden")
        demo.load(app.resume_jobs, None, [t_job, t_build_job, timer], api_visibility="private")
    return demo


def launch(indexes: str | Path = "indexes", host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           examples: list[str] | None = None, workspace: "Workspace | None" = None, jobs: JobManager | None = None,
           block: bool = True, train_dirs: list[str] | None = None, runs_dir: str | Path = "runs",
           background: Callable[[JobManager], Any] | None = None,
           on_close: Callable[[], Any] | None = None) -> gr.Blocks:
    """Serve the UI on ``host:port`` (this machine only by default).

    Only the collection roots of the indexes that exist now (plus the example images) may be read by the server;
    results of collections indexed later are served as copies (see :meth:`LookalikeApp.servable`). Uploads are
    capped at 20 MB. ``background(jobs)``, if given, runs as a job (the demo trains encoders this way);
    ``on_close()`` runs when a blocking server stops (Ctrl-C or SIGTERM), before running jobs are stopped and
    waited for. With ``block=False`` the server runs in a thread, the returned Blocks has ``local_url``, and the
    caller closes it with ``demo.close()``.
    """
    if workspace is None:
        from retrieval.workspace import Workspace

        workspace = Workspace(indexes)
    jobs = jobs if jobs is not None else JobManager()
    roots = [str(Path(m["root"]).resolve()) for m in workspace.list()]
    allowed = list(dict.fromkeys(roots + [str(Path(p).resolve()) for p in (examples or [])]))
    demo = build_app(workspace, examples=examples, train_dirs=train_dirs, jobs=jobs, runs_dir=runs_dir,
                     allowed_paths=allowed)
    if background is not None:
        jobs.start("background", "background tasks", lambda job: background(jobs))
    demo.queue(default_concurrency_limit=2)
    # A blocking server stops on Ctrl-C; make SIGTERM (service managers, `docker stop`) do the same, so running
    # trainings get to save a checkpoint below instead of dying mid-step.
    previous = None
    if block and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed,
                    max_file_size=MAX_UPLOAD, prevent_thread_lock=not block, show_error=False, ssr_mode=False,
                    quiet=not block, css=CSS, footer_links=["api"])
        if block:
            if on_close is not None:
                on_close()
            print("stopping background jobs (trainings save a checkpoint first)…", file=sys.stderr)
            jobs.shutdown(timeout=120)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return demo


def _interrupt(signum, frame):
    raise KeyboardInterrupt
