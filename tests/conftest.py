"""Shared fixtures: tiny generated collections, so no test needs the network or big files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retrieval.synthetic import make_collection

# One intra-op thread: tests use tiny tensors, where a second OpenMP thread only adds hand-offs, and on a busy
# machine (one core taken by another process) two threads ran those ops 10-30x slower than one.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """6 labelled classes × 6 images of 48 px shapes (labels are the sub-folder names)."""
    root = tmp_path_factory.mktemp("shapes")
    make_collection(root, n_classes=6, per_class=6, size=48, seed=1)
    return root


@pytest.fixture()
def shapes_index(tmp_path, shapes_dir):
    """(workspace, collection folder): a private copy of :func:`shapes_dir` indexed as ``shapes`` with ``pixels``
    (a copy, so a test may change or delete its files)."""
    import shutil

    from retrieval.workspace import Workspace

    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    ws = Workspace(tmp_path / "indexes")
    ws.build(col, "pixels", "shapes", progress=False)
    return ws, col
