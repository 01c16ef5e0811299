"""precision=auto on a CPU: bf16 where the CPU has bf16 instructions (AMX or AVX512-BF16), else fp32."""

from __future__ import annotations

import torch

from retrieval import precision
from training import runtime


def test_auto_precision_on_a_cpu_follows_the_bf16_instructions(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert runtime.resolve_precision("auto", cpu) == (None, False)  # emulated bf16 is slower than fp32
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16, False)
    assert runtime.resolve_precision("fp32", cpu) == (None, False)  # asked for, it is given
