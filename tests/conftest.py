"""Shared fixtures: tiny generated collections, so no test needs the network or big files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retrieval.synthetic import make_collection

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """6 labelled classes × 6 images of 48 px shapes (labels are the sub-folder names)."""
    root = tmp_path_factory.mktemp("shapes")
    make_collection(root, n_classes=6, per_class=6, size=48, seed=1)
    return root
