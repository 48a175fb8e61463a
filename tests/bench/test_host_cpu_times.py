"""`ember bench` reports how much CPU the host's hypervisor took from this VM during the runs."""

from __future__ import annotations

import sys
import time

import pytest

from ember.bench.engine_throughput import HostCpuTimes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_steal_share_is_read_from_proc_stat() -> None:
    before = HostCpuTimes.read()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # let some ticks pass
        pass
    after = HostCpuTimes.read()
    assert before is not None and after is not None
    assert after.total > before.total and after.steal >= before.steal
    assert 0.0 <= after.steal_share_since(before) <= 1.0


def test_steal_share_between_readings() -> None:
    earlier = HostCpuTimes(total=1_000, steal=50)
    assert HostCpuTimes(total=1_400, steal=150).steal_share_since(earlier) == 0.25
    assert HostCpuTimes(total=1_000, steal=50).steal_share_since(earlier) == 0.0
