"""precision=auto on a CPU: bf16 only where it measured faster than fp32 (AMX)."""

from __future__ import annotations

import torch

from training import runtime


def test_auto_precision_on_a_cpu_follows_amx(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16, False)
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    # AVX512-BF16 alone is not enough: it measured slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.resolve_precision("auto", cpu) == (None, False)
    assert runtime.resolve_precision("bf16", cpu) == (torch.bfloat16, False)  # asked for, it is given
    assert runtime.resolve_precision("fp32", cpu) == (None, False)
