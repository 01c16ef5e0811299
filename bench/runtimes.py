"""Other ways to run an encoder's forward pass on the CPU, against torch's eager one: speed and agreement.

Per encoder (``timm:tf_efficientnet_lite0`` at its 224 px, needs the ``pretrained`` extra; ``random:resnet10t?size=64``)
and per runtime of :data:`RUNTIMES` — eager fp32, eager bf16 (what the product uses where the CPU has native bf16),
``torch.compile`` (inductor) of both, ONNX Runtime fp32 on the graph ``lookalike export`` writes, and ONNX Runtime
int8 (static QDQ quantisation, per channel, calibrated on ``--calibrate`` of the photos):

* **speed** — images/s of the whole ``uint8 batch → unit vectors`` call on a ready batch, every runtime timed in
  turn ``--repeats`` times (best kept), so all see the same machine load; with ``--threads`` threads each;
  compile / export / quantisation time apart;
* **agreement** with eager fp32 on the same photos (Tux Paint's stamps when ``tuxpaint-stamps-default`` is installed,
  else seeded noise): cosine of each image's two vectors (min, mean) and the mean overlap of each image's top-10
  neighbours among the others. A runtime is ``agrees`` when min cosine >= 0.99 and overlap >= 0.95 (issue 22).

Rerun:  python -m bench.runtimes --quick    # 64 photos, 1 repeat of 1.5 s
        python -m bench.runtimes            # 128 photos, 2 repeats of 2 s (torch.compile: minutes)
Writes ``bench/results/runtimes.json`` (``runtimes_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.common import quick_name, save_result

ENCODERS = {"timm:tf_efficientnet_lite0": 32, "random:resnet10t?size=64": 64}  # spec → batch
STAMPS = Path("/usr/share/tuxpaint/stamps")
MIN_COSINE, MIN_OVERLAP, TOP = 0.99, 0.95, 10
Embed = Callable[[object], np.ndarray]  # uint8 (B, 3, S, S) tensor → (B, dim) float32


def photos(n: int) -> tuple[list, str]:
    from PIL import Image

    files = sorted(p for p in STAMPS.rglob("*.png") if "cartoon" not in p.parts)[:n] if STAMPS.is_dir() else []
    if files:
        return [Image.open(p).convert("RGB") for p in files], f"{len(files)} Tux Paint photos ({STAMPS})"
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(n)], "seeded noise"


def eager(encoder, dtype) -> Embed:
    return dataclasses.replace(encoder, precision=dtype).embed_uint8


def compiled(encoder, dtype) -> Embed:
    import torch

    return dataclasses.replace(encoder, precision=dtype, model=torch.compile(encoder.model)).embed_uint8


def ort_fp32(encoder, work: Path, calib, threads: int) -> Embed:
    from retrieval.export import OnnxEmbedder, export_onnx

    return OnnxEmbedder(export_onnx(encoder, work / "fp32.onnx"), threads=threads).embed_uint8


def ort_int8(encoder, work: Path, calib, threads: int) -> Embed:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from retrieval.export import INPUT, OnnxEmbedder, export_onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT: calib[i:i + 8].numpy()} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    fp32 = work / "fp32.onnx" if (work / "fp32.onnx").exists() else export_onnx(encoder, work / "fp32.onnx")
    quantize_static(str(fp32), str(work / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return OnnxEmbedder(work / "int8.onnx", threads=threads).embed_uint8


# runtime → how to make its embed call from (encoder, work folder, calibration batch, threads)
RUNTIMES: dict[str, Callable] = {
    "eager_fp32": lambda enc, work, calib, threads: eager(enc, "fp32"),
    "eager_bf16": lambda enc, work, calib, threads: eager(enc, "bf16"),
    "compile_fp32": lambda enc, work, calib, threads: compiled(enc, "fp32"),
    "compile_bf16": lambda enc, work, calib, threads: compiled(enc, "bf16"),
    "onnxruntime_fp32": ort_fp32,
    "onnxruntime_int8": ort_int8,
}


def agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))

    def top(v):
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :TOP]

    overlap = np.mean([len(set(a) & set(b)) / TOP for a, b in zip(top(ref), top(got))])
    return {"cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "top10_overlap": round(float(overlap), 4),
            "agrees": bool(cos.min() >= MIN_COSINE and overlap >= MIN_OVERLAP)}


def images_per_s(embed: Embed, x, seconds: float) -> float:
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        embed(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def measure(spec: str, batch: int, pictures: list, args, work: Path) -> dict:
    import torch

    from retrieval.encoders import load_encoder

    encoder = load_encoder(spec)
    all_x = torch.stack([encoder.preprocess(im) for im in pictures])  # (N, 3, S, S) uint8
    x = all_x[:batch] if len(all_x) >= batch else all_x.repeat((batch + len(all_x) - 1) // len(all_x), 1, 1, 1)[:batch]
    calib = all_x[:args.calibrate]
    embeds, rows = {}, {}
    for name, make in RUNTIMES.items():
        t = time.perf_counter()
        try:
            embeds[name] = make(encoder, work, calib, args.threads)
            embeds[name](x)  # compiles / warms up
            rows[name] = {"setup_s": round(time.perf_counter() - t, 2)}
        except Exception as exc:  # a runtime missing here (no onnxruntime, no compiler) is a row saying why
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    best = {name: 0.0 for name in embeds}
    for _ in range(args.repeats):
        for name, embed in embeds.items():
            best[name] = max(best[name], images_per_s(embed, x, args.seconds))
    ref = np.concatenate([embeds["eager_fp32"](all_x[i:i + batch]) for i in range(0, len(all_x), batch)])
    for name, embed in embeds.items():
        got = np.concatenate([embed(all_x[i:i + batch]) for i in range(0, len(all_x), batch)])
        rows[name].update(images_per_s=round(best[name], 1),
                          vs_eager_fp32=round(best[name] / best["eager_fp32"], 3),
                          vs_eager_bf16=round(best[name] / best["eager_bf16"], 3), **agreement(ref, got))
        print(f"{spec:<32} {name:<18} {rows[name]}", flush=True)
    return {"batch": batch, "image_size": encoder.image_size, "runtimes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 photos, 1 repeat of 1.5 s")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--calibrate", type=int, default=32, help="photos the int8 model is calibrated on")
    parser.add_argument("--encoder", action="append", choices=list(ENCODERS), help="repeat (default: all)")
    args = parser.parse_args(argv)
    args.repeats, args.seconds, n = (1, 1.5, 64) if args.quick else (2, 2.0, 128)
    import torch

    torch.set_num_threads(args.threads)
    pictures, source = photos(n)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.encoder or list(ENCODERS):
            work = Path(tmp) / str(len(figures))
            work.mkdir()
            figures[spec] = measure(spec, ENCODERS[spec], pictures, args, work)
    path = save_result(quick_name("runtimes", args.quick), figures, threads=args.threads, photos=source,
                       repeats=args.repeats, seconds=args.seconds, calibrate=args.calibrate,
                       agree_if={"cosine_min": MIN_COSINE, "top10_overlap": MIN_OVERLAP})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
