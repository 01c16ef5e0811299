"""Start a Lookalike UI in-process over a generated collection with two indexes (for the app tests)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from retrieval.synthetic import make_collection


@dataclass
class RunningApp:
    url: str
    collection: Path
    images: list[Path]
    indexes: tuple[str, ...]
    demo: object


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(root: Path, n_classes: int, per_class: int, size: int) -> RunningApp:
    from app.ui import launch
    from retrieval.workspace import Workspace

    collection = root / "photos"
    images = make_collection(collection, n_classes=n_classes, per_class=per_class, size=size, seed=3)
    ws = Workspace(root / "indexes")
    ws.build(collection, "pixels", "pixels", progress=False)
    ws.build(collection, f"random:resnet10t?size={size}", "random", progress=False)
    demo = launch(workspace=ws, port=free_port(), block=False, examples=[str(images[0]), str(images[-1])],
                  train_dirs=[str(collection)], runs_dir=root / "runs")
    return RunningApp(demo.local_url, collection, images, ("pixels", "random"), demo)
