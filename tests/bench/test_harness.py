"""The benchmarks' harness (bench.common) and list (bench.registry, python -m bench): a made-up benchmark run end to
end through them, the one child-process protocol, results that a quick run never overwrites."""

from __future__ import annotations

import importlib
import json
import os

import pytest

from bench import common
from bench.registry import BENCHMARKS, NEEDS, Benchmark, module

FAKE = '''
import sys
from bench.common import child_main, parser, quick_name, report, run_child, save_result


def measure(task):
    return {"doubled": 2 * task["x"]}


def main(argv=None):
    if child_main(argv, measure):
        return 0
    args = parser(__doc__).parse_args(argv)
    figures = {"child": run_child("fake_bench", {"x": 21}), "seed": args.seed}
    report(save_result(quick_name("fake", args.quick), figures, quick=args.quick), args, "a table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.fixture
def fake_bench(tmp_path, monkeypatch):
    (tmp_path / "fake_bench.py").write_text(FAKE, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("LOOKALIKE_BENCH_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_a_made_up_row_runs_end_to_end_and_its_quick_run_writes_apart(fake_bench, monkeypatch):
    bench_main = importlib.import_module("bench.__main__")
    monkeypatch.setitem(BENCHMARKS, "fake", Benchmark("a made-up benchmark", 0.1))
    monkeypatch.setattr(bench_main, "module", lambda name: "fake_bench" if name == "fake" else module(name))
    assert bench_main.run(["fake"], quick=True) == {"fake": "ok"}
    saved = json.loads((fake_bench / "results" / "fake_quick.json").read_text())
    assert saved["figures"] == {"child": {"doubled": 42}, "seed": 0}  # through the child protocol
    assert saved["settings"] == {"quick": True} and saved["date"] and saved["machine"]["cpu_count"]
    assert not (fake_bench / "results" / "fake.json").exists()  # --quick never writes the full result


def test_a_row_that_lacks_what_it_needs_is_skipped_with_how_to_get_it(monkeypatch):
    bench_main = importlib.import_module("bench.__main__")
    monkeypatch.setitem(NEEDS, "unobtainium", (lambda: False, "apt-get install unobtainium"))
    monkeypatch.setitem(BENCHMARKS, "fake", Benchmark("needs what is not here", 0.1, ("unobtainium",)))
    assert bench_main.run(["fake"], quick=True) == {"fake": "skipped, needs unobtainium: apt-get install unobtainium"}


def test_a_failing_child_raises_with_its_error(fake_bench):
    with pytest.raises(RuntimeError, match="KeyError"):
        common.run_child("fake_bench", {"no x": 1})


def test_child_main_answers_only_the_child_flag(capsys):
    assert common.child_main(["--quick"], lambda task: {}) is False
    assert common.child_main([common.CHILD_FLAG, '{"a": 1}'], lambda task: {"got": task["a"]}) is True
    assert json.loads(capsys.readouterr().out) == {"got": 1}


def test_save_result_keeps_the_json_when_its_plot_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    drawn = []
    path = common.save_result("x", {"a": 1}, plot=lambda figures, png: drawn.append((figures, png.name)), k=2)
    assert drawn == [({"a": 1}, "x.png")] and json.loads(path.read_text())["settings"] == {"k": 2}

    def broken(figures, png):
        raise ImportError("no matplotlib")

    common.save_result("y", {"b": 2}, plot=broken)
    assert json.loads((tmp_path / "y.json").read_text())["figures"] == {"b": 2}
    assert "plot failed: ImportError: no matplotlib" in capsys.readouterr().err


def test_markdown_table_formats_cells():
    assert common.markdown_table(["row", "a", "b"], [["x", 0.12345, None], ["y", 3, "ok"]]) == (
        "| row | a | b |\n|---|---:|---:|\n| x | 0.123 | - |\n| y | 3 | ok |")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_registered_benchmark_is_a_module_with_a_main(name):
    mod = importlib.import_module(module(name))
    assert callable(mod.main) and mod.__doc__, f"{module(name)} needs a main and a docstring"
    assert all(need in NEEDS for need in BENCHMARKS[name].needs)


def test_every_runnable_bench_file_is_registered():
    shared = {"common", "datasets", "registry", "photos", "peers", "__main__", "__init__"}
    files = {p.stem for p in (common.ROOT / "bench").glob("*.py")}
    assert files - shared == set(BENCHMARKS), "register a new benchmark in bench/registry.py"


def test_the_emoji_data_set_pairs_queries_by_file_name_and_quality_scores_them(tmp_path):
    from PIL import Image

    from bench.datasets import EmojiPairs
    from bench.quality import Evaluation
    from retrieval.encoders import load_encoder

    colours = {"faces/a.png": (250, 0, 0), "faces/b.png": (0, 250, 0), "food/c.png": (0, 0, 250)}
    for vendor in ("twitter", "google"):
        for rel, colour in colours.items():
            (tmp_path / vendor / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), colour).save(tmp_path / vendor / rel)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "google" / "food" / "only-here.png")
    pairs = EmojiPairs(tmp_path / "twitter", tmp_path / "google", meta=None)
    assert sorted(pairs.query_paths) == sorted(colours) and pairs.dropped == 1  # no match for only-here.png
    assert pairs.ground_truth == "relative file name"
    scores = Evaluation(tmp_path / "twitter", tmp_path / "google", meta=None)(load_encoder("pixels"))
    assert scores["recall@1"] == 1.0 and scores["queries"] == 3 and scores["collection"] == 3
