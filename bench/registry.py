"""Every benchmark, one row each: its module, what it measures, what ``--quick`` costs and what it needs.

A new benchmark is a module ``bench/NAME.py`` (a data set from :mod:`bench.datasets`, an evaluation, a ``main``
built on :mod:`bench.common`) and one row here; ``python -m bench`` and ``make bench-quick`` run every row.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from bench.datasets import FASHION_MNIST, STAMPS

# what a benchmark may need beyond `make install`: name -> (is it here?, how to get it)
NEEDS = {
    "lightly": (lambda: importlib.util.find_spec("lightly") is not None,
                "pip install -e '.[bench]' (the `bench` extra)"),
    "tuxpaint": (lambda: Path(STAMPS).is_dir(), "apt-get install -y tuxpaint-stamps-default"),
    "fashion-mnist": (lambda: Path(FASHION_MNIST).is_dir(), "apt-get install -y dataset-fashion-mnist"),
}


@dataclass(frozen=True)
class Benchmark:
    """One row: ``python -m bench.<name>`` measures ``description``; its ``--quick`` takes about ``quick_minutes``
    on 2 idle cores and needs the :data:`NEEDS` named in ``needs``."""

    description: str
    quick_minutes: float
    needs: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """What this machine lacks to run it, each as the way to get it."""
        return [f"{need}: {NEEDS[need][1]}" for need in self.needs if not NEEDS[need][0]()]


BENCHMARKS: dict[str, Benchmark] = {
    "quality": Benchmark("cross-vendor emoji retrieval of every method against lightly's (the demo's data)", 5.0),
    "tuxpaint_retrieval": Benchmark("category retrieval on real photos, pretrained / fine-tuned / distilled rows",
                                    8.0, ("tuxpaint",)),
    "copy_detection": Benchmark("edited copies of real photos among distractors (DISC21's metrics)", 10.0,
                                ("tuxpaint",)),
    "fashion_mnist": Benchmark("kNN accuracy on Fashion-MNIST product photos", 10.0, ("fashion-mnist",)),
    "train_quality": Benchmark("SimCLR, MoCo and BYOL after the same CPU minutes on generated shapes", 4.0),
    "train_throughput": Benchmark("training images/s against lightly's implementation of the same method", 5.0,
                                  ("lightly",)),
    "augment_throughput": Benchmark("batched photometric augmentation against torchvision image by image", 0.5),
    "embed_throughput": Benchmark("index build images/s against the bare forward pass; peak memory", 3.0),
    "embed_precision": Benchmark("bf16 against fp32 embedding: speed and how far the vectors move", 1.0),
    "cpu_limits": Benchmark("the CPU's limits and how close the commands come to them", 6.0),
    "index_bench": Benchmark("index kinds at 1M vectors: build, q/s, recall, memory", 5.0),
    "beyond_memory": Benchmark("bytes per vector of each index kind; FAISS on-disk inverted lists", 2.0),
    "scale": Benchmark("photo folders at 100k: build, refresh, search latency, near duplicates, map", 5.0),
    "thumbnails": Benchmark("what a gallery of 50 phone photos costs the browser, originals against thumbnails",
                            1.0),
    "allocator": Benchmark("tcmalloc against glibc tuned and as it comes: whole index builds, rounds interleaved",
                           3.0),
    "scorecard": Benchmark("the label-free scorecard against labels: Spearman and top pick per labelled benchmark",
                           10.0, ("tuxpaint",)),
    "api_latency": Benchmark("POST /api/search latency against Workspace.search at 10k-100k vectors", 2.0),
    "runtimes": Benchmark("torch.compile and ONNX Runtime (fp32, int8) against the eager forward: speed, agreement",
                          8.0, ("tuxpaint",)),
    "build_profile": Benchmark("where lookalike index build's time goes, phase by phase", 3.0),
    "pipeline": Benchmark("the search pipeline's stages (pooling, scales, whitening, QE/DBA, score normalisation, "
                          "duplicate threshold) with the pretrained encoder on the four benchmarks", 15.0,
                          ("tuxpaint",)),
    "marks": Benchmark("a few labels: held-out mAP@10 after the map learnt from marks (10%, 1% of the labels, "
                       "twenty marked queries) on Tux Paint", 5.0, ("tuxpaint",)),
    "refresh_unchanged": Benchmark("lookalike index refresh of an unchanged folder in a fresh process", 3.0),
}


def module(name: str) -> str:
    """The module ``python -m`` runs for benchmark ``name``."""
    return f"bench.{name}"
