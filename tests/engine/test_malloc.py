"""retain_freed_memory: freed activation blocks are reused instead of page-faulted in again."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import types

import pytest

from rankserve.engine.backends import malloc
from rankserve.engine.backends.malloc import retain_freed_memory

# A MiniLM-size MLP slice of varying row counts, the allocation pattern of a forward pass; prints
# the minor page faults of 20 repeats after one warm-up.
SCRIPT = """
import resource, sys, torch
from rankserve.engine.backends.malloc import retain_freed_memory
if sys.argv[1] == "tuned":
    assert retain_freed_memory()
torch.set_num_threads(1)
x, w, b = torch.randn(1024, 384), torch.randn(1536, 384), torch.randn(1536)
def run():
    for n in (1024, 700, 1024, 300, 1024):
        torch.nn.functional.gelu(torch.addmm(b, x[:n], w.t()))
run()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    run()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    # Both children start from glibc's initial mmap threshold (128 KiB), pinned: left dynamic, glibc
    # raises it on its own as blocks are freed, so the untuned count varied from run to run
    # (3,000-180,000 here) with the order of frees. retain_freed_memory() must override it.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip())


@pytest.mark.skipif(not retain_freed_memory(), reason="needs glibc")
def test_freed_activations_are_reused_not_faulted_in_again():
    default, tuned = faults("default"), faults("tuned")
    # 100 MLP outputs of up to 6 MiB: from fresh mmap pages each time (~1,500 faults each) ...
    assert default > 50_000, default
    # ... or from reused heap blocks (a few thousand faults at most where the heap first grows).
    assert tuned < 10_000, (tuned, default)


class FakeLibc:
    """Stands in for ``ctypes.CDLL("libc.so.6")``: records mallopt calls, returns ``result`` (glibc: 1 = ok)."""

    def __init__(self, log: list, result: int, glibc: bool = True):
        self.log, self.result = log, result
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.99"

    def mallopt(self, param: int, value: int) -> int:
        self.log.append((param, value))
        return self.result


@pytest.fixture
def fake_libc(monkeypatch):
    """Route retain_freed_memory's dlopen to a FakeLibc; start from a process that has not tuned malloc yet.

    Returns ``(opened, mallopt_calls, results, glibc)``: set ``results[0]`` to the mallopt return value
    and ``glibc[0]`` to whether the next opened libc is glibc. ``_done`` (and ``ctypes``, ``sys`` in
    that module only) are restored after the test.
    """
    opened: list[str] = []
    calls: list[tuple[int, int]] = []
    results = [1]
    glibc = [True]

    def cdll(name):
        opened.append(name)
        return FakeLibc(calls, results[0], glibc[0])

    monkeypatch.setattr(malloc, "ctypes", types.SimpleNamespace(CDLL=cdll, util=ctypes.util))
    monkeypatch.setattr(malloc, "sys", types.SimpleNamespace(platform="linux"))
    monkeypatch.setattr(malloc, "_done", False)
    return opened, calls, results, glibc


TUNE = [(malloc.M_MMAP_THRESHOLD, malloc.MMAP_THRESHOLD), (malloc.M_TRIM_THRESHOLD, malloc.TRIM_THRESHOLD)]


def test_second_call_is_a_no_op_that_still_reports_success(fake_libc):
    opened, calls, _, _ = fake_libc
    assert malloc.retain_freed_memory() is True
    assert calls == TUNE  # both thresholds set
    assert len(opened) == 1
    assert malloc.retain_freed_memory() is True
    assert malloc.retain_freed_memory() is True
    assert calls == TUNE  # later calls call mallopt no more ...
    assert len(opened) == 1  # ... and do not even open libc


def test_failed_mallopt_reports_false_and_a_later_call_retries(fake_libc):
    opened, calls, results, _ = fake_libc
    results[0] = 0  # glibc's mallopt returns 0 on error
    assert malloc.retain_freed_memory() is False
    assert calls and calls[0] == TUNE[0]
    failed = len(calls)
    results[0] = 1
    assert malloc.retain_freed_memory() is True  # not remembered as done: tried again, and succeeded
    assert calls[failed:] == TUNE
    assert malloc.retain_freed_memory() is True  # and now it is done
    assert calls[failed:] == TUNE
    assert len(opened) == 2


def test_not_glibc_reports_false_without_calling_mallopt(fake_libc, monkeypatch):
    opened, calls, _, glibc = fake_libc
    glibc[0] = False  # musl: no gnu_get_libc_version, and its mallopt does nothing
    assert malloc.retain_freed_memory() is False
    assert calls == []
    assert len(opened) == 1
    monkeypatch.setattr(malloc, "sys", types.SimpleNamespace(platform="darwin"))
    assert malloc.retain_freed_memory() is False
    assert len(opened) == 1  # not Linux: libc is not even opened


def test_periodic_trim_runs_at_most_once_per_interval(monkeypatch):
    from rankserve.engine.backends import malloc

    trims = []
    clock = iter([100.0, 100.0, 104.0, 111.0, 112.0, 121.5])
    monkeypatch.setattr(malloc.time, "monotonic", lambda: next(clock))
    trim = malloc.PeriodicTrim(interval=10.0)  # created at t=100
    if trim._trim is None:
        pytest.skip("needs glibc's malloc_trim")
    trim._trim = trims.append
    assert [trim() for _ in range(5)] == [False, False, True, False, True]  # t = 100, 104, 111, 112, 121.5
    assert trims == [0, 0]


def test_periodic_trim_returns_memory_to_the_os():
    """A process that freed a large heap gets most of it back out of its RSS after one trim."""
    script = """
import ctypes, sys
from rankserve.engine.backends.malloc import PeriodicTrim, retain_freed_memory
assert retain_freed_memory()
rss = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
blocks = [bytearray(4 << 20) for _ in range(64)]  # 256 MiB from the heap (below the raised mmap threshold)
del blocks
before = rss()
PeriodicTrim(interval=0.0)()
print(before, rss())
"""
    if not retain_freed_memory():
        pytest.skip("needs glibc")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before - after > 200 * 1024, (before, after)  # KiB: most of the 256 MiB went back
