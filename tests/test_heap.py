"""The heap tuning the query service applies at start (glibc's mallopt)."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_is_accepted_by_glibc_and_zero_changes_nothing() -> None:
    # in a child: the thresholds are process-wide and would outlive this test
    code = ("from llmmeter_common.heap import keep_freed_memory as k; "
            "print(k(0), k(256 << 20))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]  # Debian: glibc
