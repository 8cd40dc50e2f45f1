"""Peak memory of a command's whole process tree, sampled from /proc (Linux): the benchmarks' one memory probe.

A command's worker processes (nnU-Net's data-augmentation and export workers, for instance) count with it, as summed
RSS and as summed PSS (shared pages, e.g. the torch libraries every worker maps, divided among the processes).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def tree_memory(root: int) -> tuple[int, int]:
    """Resident bytes of a process and all its descendants (from /proc): the sum of their RSS, and of their PSS
    (shared pages, e.g. the torch libraries every worker maps, divided among the processes sharing them)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    rss = pss = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines()[1:] if ":" in line)
            rss += int(fields["Rss"].split()[0]) * 1024
            pss += int(fields["Pss"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    return rss, pss


def run_measured(argv: list[str], env: dict, log: Path) -> tuple[float, int, int]:
    """Wall seconds and peak process-tree RSS and PSS of one command (which must succeed; its output goes to
    ``log``). The tree is sampled every 0.1 s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = 0
        while process.poll() is None:
            rss, pss = tree_memory(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}); see {log}")
    return seconds, peak_rss, peak_pss
