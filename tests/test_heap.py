"""The memory tuning the services apply at start: glibc's mallopt, and the GC freezing start-up objects."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_is_accepted_by_glibc_and_zero_changes_nothing() -> None:
    # in a child: the thresholds are process-wide and would outlive this test
    code = ("from llmmeter_common.heap import keep_freed_memory as k; "
            "print(k(0), k(256 << 20))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]  # Debian: glibc


def test_freeze_startup_objects_takes_them_out_of_collections_and_cycles_still_go() -> None:
    code = """
import gc, weakref
from llmmeter_common.heap import freeze_startup_objects
frozen = freeze_startup_objects()
class Node: pass
a, b = Node(), Node()
a.peer, b.peer = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
print(frozen > 1000, gc.get_freeze_count() == frozen, gone() is None, gc.get_threshold()[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "10000"]
