"""CPU seconds of the service, the client and PostgreSQL during the end-to-end run.

The throughput alone does not tell which process is the bottleneck on a 2-core machine; the
CPU each one used during the run does. Read from /proc, so Linux only (0 elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(stat: str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    return stat[stat.rindex(")") + 2:].split()


def _proc_cpu(pid: int, with_children: bool = False) -> float:
    """CPU seconds used by a process (user+system), optionally with its reaped children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = _stat_fields(stat)
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(_stat_fields(stat)[1]) == pid:
            out.append(int(entry.name))
    return out


def postmaster_pid(data_dir: Path) -> int | None:
    """The server's main process, whose children are the backends doing the work."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_snapshot(service_pid: int | None, client_pid: int | None, pg_pid: int | None) -> dict[str, float]:
    """CPU seconds so far per role; two snapshots around the run give what the run cost each."""
    snap = {"service": 0.0, "client": 0.0, "postgres": 0.0}
    if service_pid:
        snap["service"] = _proc_cpu(service_pid)
    if client_pid:
        snap["client"] = _proc_cpu(client_pid)
    if pg_pid:
        snap["postgres"] = _proc_cpu(pg_pid, with_children=True) + sum(
            _proc_cpu(c) for c in _children(pg_pid)
        )
    return snap
