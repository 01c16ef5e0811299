"""The allocator settings every model-running process gets (retrieval.allocator)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates a 64 MiB block with the C allocator and reports where glibc put it: bytes in mmapped blocks
# (mallinfo2().hblkhd) added while it is held. Tuned, large blocks come from the heap (0 bytes mmapped).
PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, {root!r})
import retrieval.encoders  # what every model-running process imports
from retrieval.allocator import allocator_state

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd  # blocks mmapped before the settings took effect stay counted
block = libc.malloc(64 << 20)
held = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({{"state": allocator_state(), "mmapped_while_held": held}}))
"""


def _run(script: str, **env: str) -> dict:
    """Run ``script`` in a fresh Python with no allocator settings inherited but ``env``; its last line's JSON."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("LOOKALIKE_ALLOCATOR", "LD_PRELOAD")}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", script.format(root=str(ROOT))], capture_output=True, text=True,
                         env=full_env, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _probe(**env: str) -> dict:
    return _run(PROBE, **env)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; elsewhere nothing is changed")
def test_model_processes_serve_large_blocks_from_the_heap():
    tuned = _probe()
    assert tuned["state"] == "tuned"
    assert tuned["mmapped_while_held"] == 0  # a 64 MiB activation is not a fresh mmap that free() unmaps


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; elsewhere nothing is changed")
def test_the_environment_can_leave_the_allocator_as_it_comes():
    plain = _probe(LOOKALIKE_ALLOCATOR="system")
    assert plain["state"] == "system"
    assert plain["mmapped_while_held"] >= 64 << 20  # glibc's own behaviour: the block is mmapped


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    import retrieval.allocator as allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    monkeypatch.delenv(allocator.ENV, raising=False)
    called = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: called.append(1) or True)
    assert allocator.tune_allocator() == "preloaded"
    assert called == []
    assert allocator.tune_allocator() == "preloaded"  # once per process


REEXEC = r"""
import json, os, sys
sys.path.insert(0, {root!r})
from retrieval import allocator
allocator.reexec_with_tcmalloc()  # returns only when it does not start the process again
print(json.dumps({{"preload": os.environ.get("LD_PRELOAD", ""), "state": allocator.tune_allocator()}}))
"""


def _reexec(**env: str) -> dict:
    return _run(REEXEC, **env)


def test_a_command_starts_again_under_tcmalloc_where_it_is_installed():
    from retrieval.allocator import tcmalloc_path

    if tcmalloc_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("libtcmalloc-minimal4 is not installed (.ci/run installs it)")
        pytest.skip("Debian's libtcmalloc-minimal4 is not installed")
    again = _reexec()
    assert again["preload"].startswith(tcmalloc_path()) and again["state"] == "preloaded"
    assert _reexec(LOOKALIKE_ALLOCATOR="system") == {"preload": "", "state": "system"}
    assert _reexec(LOOKALIKE_ALLOCATOR="glibc")["preload"] == ""  # glibc tuned, never tcmalloc


def test_the_cli_starts_again_only_for_commands_that_run_a_model():
    from app.cli import _runs_a_model, build_parser

    parse = build_parser().parse_args
    assert not _runs_a_model(parse(["index", "list"])) and not _runs_a_model(parse(["index", "info", "x"]))
    assert _runs_a_model(parse(["index", "build", "d", "--encoder", "pixels", "--name", "x"]))
    assert _runs_a_model(parse(["search", "x", "q.png"])) and _runs_a_model(parse(["train", "d", "--epochs", "1"]))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_free_memory_kept_by_the_tuned_allocator_can_be_handed_back():
    code = textwrap.dedent("""
        import os
        from retrieval.allocator import release_free_memory, tune_allocator
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert tune_allocator() == "tuned"
        blocks = [bytearray(8 << 20) for _ in range(40)]  # 320 MB from the heap (mmap is off once tuned)
        del blocks
        kept = rss()
        assert release_free_memory()
        print(kept - rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LOOKALIKE_ALLOCATOR": "glibc"}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 200 << 20  # most of the 320 MB went back
