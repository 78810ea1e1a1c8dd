"""What the CPU is and has, read without torch: core count, model and feature flags, native bf16.

Torch-free on purpose: the ONNX Runtime and OpenVINO backends start without importing torch (1.4-1.6 s
of a cold start, bench/cold_start.py), and they need these facts too.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def cpu_description() -> str:
    """The CPU's model name and feature flags (Linux ``/proc/cpuinfo``, first core), else the
    platform's processor string: what a per-machine timing or compiled-kernel cache is keyed on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = {}
    for line in info.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags") and name not in wanted:
            wanted[name] = value.strip()
    return "|".join(wanted.values())


def bf16_native() -> bool:
    """The CPU multiplies bf16 in hardware: AVX512-BF16 or AMX-BF16 (else oneDNN and OpenVINO
    emulate bf16, slower than fp32)."""
    flags = set(cpu_description().rpartition("|")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})
