"""What else the machine was doing while a run trained.

On a small CPU machine a second torch process does not halve a run's speed, it can cut it
10-40x (two processes with two threads each on two cores thrash), and a step time or an
equal-time comparison measured then says more about the neighbour than about the model.
``LoadMonitor`` samples the load average and, from /proc, the CPU time every other process
spent during the run, so the run directory can say whether the run had the cores to itself.
Linux only for the process list; elsewhere only the load average (where the OS has one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MACHINE_LOAD_NAME = "machine_load.jsonl"  # in a run directory: one line per start or resume
# A process that used more than this share of one core over the run counts as busy.
BUSY_CORE_SHARE = 0.2
PROC = Path("/proc")


def _process_stats() -> dict[int, tuple[str, int, float]]:
    """{pid: (command name, parent pid, user + system CPU seconds)} of every readable process
    (Linux /proc; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    table = {}
    for entry in PROC.glob("[0-9]*") if PROC.is_dir() else ():
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        # fields[1] is the parent pid, fields[11] and [12] the user and system ticks
        table[int(entry.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def _cpu_seconds_by_process() -> dict[int, tuple[str, float]]:
    """{pid: (command name, user + system CPU seconds)} of every readable process."""
    return {pid: (name, cpu) for pid, (name, _, cpu) in _process_stats().items()}


def _own_processes() -> set[int]:
    """This process and its descendants (DataLoader workers), which are the run itself."""
    own = {os.getpid()}
    parents = {pid: parent for pid, (_, parent, _) in _process_stats().items()}
    changed = True
    while changed:
        children = {pid for pid, parent in parents.items() if parent in own} - own
        own |= children
        changed = bool(children)
    return own


class LoadMonitor:
    """``start()`` at the beginning of a run, ``sample()`` at each log step, ``summary()`` at the end."""

    def __init__(self):
        self.loads: list[float] = []
        self.started = time.monotonic()
        self.cpu_at_start = _cpu_seconds_by_process()

    def sample(self) -> None:
        if hasattr(os, "getloadavg"):
            self.loads.append(os.getloadavg()[0])

    def summary(self) -> dict:
        """{"cores", "load1_mean", "load1_max", "busy_processes": [{pid, name, core_share}], "shared"}.

        ``shared`` is True when another process kept more than ``BUSY_CORE_SHARE`` of a core
        busy over the run: its step times are not this model's alone.
        """
        self.sample()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        own = _own_processes()
        busy = []
        for pid, (name, cpu) in _cpu_seconds_by_process().items():
            if pid in own:
                continue
            # A process that started during the run counts from zero.
            share = (cpu - self.cpu_at_start.get(pid, (name, 0.0))[1]) / elapsed
            if share > BUSY_CORE_SHARE:
                busy.append({"pid": pid, "name": name, "core_share": round(share, 2)})
        return {
            "cores": os.cpu_count(),
            "load1_mean": round(sum(self.loads) / len(self.loads), 2) if self.loads else None,
            "load1_max": round(max(self.loads), 2) if self.loads else None,
            "busy_processes": sorted(busy, key=lambda b: -b["core_share"]),
            "shared": bool(busy),
        }


def read_machine_load(run_dir: str | os.PathLike) -> dict | None:
    """A run's machine load over all its parts: {"shared", "busy_processes", "load1_max"}; None
    for a run recorded before machine_load.jsonl existed."""
    path = Path(run_dir) / MACHINE_LOAD_NAME
    if not path.is_file():
        return None
    parts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loads = [p["load1_max"] for p in parts if p.get("load1_max") is not None]
    return {"shared": any(p["shared"] for p in parts),
            "busy_processes": [b for p in parts for b in p["busy_processes"]],
            "load1_max": max(loads) if loads else None, "parts": len(parts)}
