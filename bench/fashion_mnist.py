"""Fashion-MNIST: product photographs, trained on without labels, scored by kNN classification of the test set.

Debian's ``dataset-fashion-mnist`` installs the four IDX files under ``/usr/share/datasets/fashion-mnist/``
(``train-images-idx3-ubyte.gz`` …): 60,000 training and 10,000 test images, 28×28 grey, 10 classes. Each encoder
embeds both sets through its own ``embed_uint8`` (the index's code path after decoding): the grey images are
resized to the encoder's input size with its interpolation filter and repeated to 3 channels, in batches. The
score is the weighted kNN accuracy of the 10,000 test images against the 60,000 training images
(``retrieval.metrics.knn_accuracy``: k=200, T=0.1, InstDisc's protocol), and ``knn@20``, the vote of the 20
nearest. Trained rows train on the 60,000 training images written as 28×28 PNGs to a temp folder, no labels.
``--db-images N`` scores against N of them only (the trained rows still train on all), and any cut-short split
writes ``fashion_mnist_reduced.json`` instead of ``fashion_mnist.json``: on one CPU core a row of the pretrained
architecture embeds at 224 px, 152 images/s in bf16 in the full run of 2026-12-02 (its default on a CPU with
bf16 instructions, ``retrieval.precision``; bare forward 172 against 98 in fp32, ``bench/embed_precision.py``), so
the 70,000 images take about 8 minutes a row, and ``--eval-device cuda``
(embedding only) scores the full protocol in minutes.
``--quick`` uses 2,000 training and 1,000 test images (the first of a seeded permutation, for training too).

Rerun:  python -m bench.fashion_mnist --quick --groups baselines   # untrained rows
        python -m bench.fashion_mnist --minutes 3 --runs-dir runs/bench-fashion-mnist
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


from bench import photos
from bench.datasets import CLASSES, FASHION_MNIST, FILES, embed_grey, load_split, subsample, write_pngs

NAME = "fashion_mnist"
QUICK = {"train": 2000, "test": 1000}
HEADLINE = ("knn_acc",)  # what "beats" means in the goals
COLUMNS = ("knn_acc", "knn@20")


def result_name(args) -> str:
    """``fashion_mnist`` for the full protocol, ``fashion_mnist_reduced`` when any split is cut short (``--quick``
    gets ``_quick`` from :func:`bench.common.quick_name`)."""
    cut = not args.quick and any(getattr(args, f"{k}_images") is not None for k in ("train", "test", "db"))
    return f"{NAME}_reduced" if cut else NAME


def main(argv: list[str] | None = None) -> int:
    from retrieval.metrics import knn_accuracy

    ap = photos.photo_parser(__doc__)
    ap.add_argument("--train-images", type=int, default=None, help="use this many training images (default: "
                    f"all 60,000; --quick: {QUICK['train']})")
    ap.add_argument("--test-images", type=int, default=None,
                    help=f"use this many test images (default: all 10,000; --quick: {QUICK['test']})")
    ap.add_argument("--db-images", type=int, default=None, help="kNN database: this many of the training images "
                    "(default: all of them); trained rows still train on every training image")
    args = ap.parse_args(argv)
    sizes = {k: getattr(args, f"{k}_images") or (QUICK[k] if args.quick else None) for k in QUICK}
    data = {}
    for salt, split in enumerate(FILES):
        images, labels = load_split(split)
        keep = subsample(len(images), sizes[split], args.seed, salt)
        data[split] = (images[keep], labels[keep])
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    in_db = subsample(len(train_x), args.db_images, args.seed, len(FILES))
    db_x, db_y = train_x[in_db], train_y[in_db]

    def evaluate(encoder) -> dict:
        db, s1 = embed_grey(encoder, db_x)
        qs, s2 = embed_grey(encoder, test_x)
        return {"knn_acc": knn_accuracy(qs, test_y, db, db_y), "knn@20": knn_accuracy(qs, test_y, db, db_y, k=20),
                "db_images": len(db), "test_images": len(qs), "embedded": len(db) + len(qs),
                "embed_seconds": s1 + s2}

    with tempfile.TemporaryDirectory(prefix="bench-fmnist-") as tmp:
        folder: list[Path] = []

        def train_dir() -> Path:
            if not folder:
                folder.append(write_pngs(train_x, Path(tmp) / "train"))
            return folder[0]

        return photos.run_benchmark(
            result_name(args), args, evaluate, train_dir, COLUMNS, HEADLINE,
            f"Fashion-MNIST kNN accuracy: {len(test_x)} test images against {len(db_x)} training images",
            data={"train_images": len(train_x), "db_images": len(db_x), "test_images": len(test_x),
                  "classes": list(CLASSES),
                  "source": str(FASHION_MNIST), "knn": "k=200, T=0.1 (knn@20: k=20)",
                  "embedding": "grey 28x28 resized to each encoder's input size with its filter, 3 channels"})


if __name__ == "__main__":
    sys.exit(main())
