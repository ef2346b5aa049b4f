"""Freed tensor memory is kept for the next batch instead of faulted in afresh."""

import os
import platform
import subprocess
import sys

import pytest

from clipbench import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
# Five 48 MB tensors made and freed in turn: above glibc's largest dynamic mmap threshold
# (32 MB), so by default each is mapped afresh and its 12,288 pages fault in again. Kept, the
# heap needs a few rounds first: each freed block is a few bytes short of the next aligned
# request until its neighbours are freed too (glibc 2.36: six rounds, then none).
FAULTS_OF_FIVE_TENSORS = """
import resource, sys, torch
from clipbench.allocator import keep_freed_memory
print(keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    x = torch.ones(48 << 20, dtype=torch.uint8)
    del x
before = faults()
for _ in range(5):
    x = torch.ones(48 << 20, dtype=torch.uint8)
    del x
print(faults() - before)
"""


def faults_of_five_tensors(switch: str | None) -> tuple[bool, int]:
    """(whether the thresholds were raised, the page faults of five tensors after it)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("GLIBC_TUNABLES", None)
    env.pop(allocator.SWITCH, None)
    if switch is not None:
        env[allocator.SWITCH] = switch
    run = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_FIVE_TENSORS],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    applied, faults = run.stdout.split()[-2:]
    return applied == "True", int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc thresholds")
def test_kept_memory_is_not_faulted_in_again():
    pages = 5 * (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    applied, faults = faults_of_five_tensors(None)
    assert applied and faults < pages // 50
    applied, faults = faults_of_five_tensors("0")  # switched off: every tensor faults in
    assert not applied and faults > pages // 2


def test_not_applied_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory.__wrapped__() is False
