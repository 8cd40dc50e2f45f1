"""Benchmark of cohorts (issue 15): cases per minute on 20 small synthetic CTs, four ways, each a whole command.

20 CT phantoms (`phantoms.ct_phantom`, 40×96×96 voxels at 1.5×1.5×3 mm, a different seed each) are written as
NRRD and segmented by the bundled ``ct-spleen`` model (a 3D U-Net) on the CPU:

- a shell loop: one ``unetseg predict -i CASE -o OUT`` process per case (start-up, imports, model load each time);
- ``unetseg predict -i FOLDER -o OUT_DIR --workers 1`` (this process segments case after case);
- ``--workers 2`` (two worker processes, the CPU threads divided between them);
- ``--ray local --cpus-per-worker 1`` (a private Ray instance here, one actor per CPU).

It prints each way's wall time and cases per minute, the median seconds per case the run log records for the
segmentation itself (read, segment, write), and what batching saves: per case, the shell loop's wall time
less the cohort's segmentation time (Python start-up, imports and model loading, paid once per worker instead).

Usage: ``python benchmarks/cohort.py [--cases 20] [--work DIR] [--model NAME] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from unetseg.jobs.run_log import RUN_LOG_NAME, read_records
from unetseg.phantoms import ct_phantom

PHANTOM = {"shape": (40, 96, 96), "spacing": (1.5, 1.5, 3.0)}  # (z, y, x) voxels; (x, y, z) mm
UNETSEG = [sys.executable, "-m", "unetseg", "predict"]


def write_cases(folder: Path, count: int) -> list[Path]:
    """``count`` CT phantoms as int16 NRRD files (what a scanner export holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        image, _ = ct_phantom(seed=seed, **PHANTOM)
        path = folder / f"ct{seed:03d}.nrrd"
        sitk.WriteImage(sitk.Cast(image.to_sitk(), sitk.sitkInt16), str(path))
        paths.append(path)
    return paths


def timed(command: list[str]) -> float:
    """Run a command (its output discarded) and return its wall time; a failure stops the benchmark."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def shell_loop(cases: list[Path], out: Path, model: str) -> float:
    """One ``unetseg predict`` process per case, as a shell loop would run them."""
    out.mkdir(parents=True)
    return sum(timed([*UNETSEG, "-i", str(c), "-m", model, "-o", str(out / f"{c.stem}.seg.nrrd"), "--device", "cpu"])
               for c in cases)  # fmt: skip


def cohort(folder: Path, out: Path, model: str, *extra: str) -> tuple[float, float]:
    """One cohort command; its wall time and the median per-case segmentation seconds in its run log (the median:
    each worker's first case also pays for the imports)."""
    wall = timed([*UNETSEG, "-i", str(folder), "-m", model, "-o", str(out), "--device", "cpu", *extra])
    records = [r for r in read_records(out / RUN_LOG_NAME) if r["status"] == "done"]
    return wall, statistics.median(r["seconds"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--model", default="ct-spleen", help="catalog name or package path (default: ct-spleen)")
    parser.add_argument("--skip-ray", action="store_true", help="leave out --ray local")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="unetseg-cohort-bench-"))
    cases = write_cases(work / "cases", args.cases)
    print(f"{len(cases)} CT phantoms {PHANTOM['shape']} voxels, model {args.model}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, work folder {work}", flush=True)  # fmt: skip
    rows = [("shell loop of single-case `unetseg predict`", shell_loop(cases, work / "loop", args.model), None)]
    ways = {"`--workers 1`": ["--workers", "1"], "`--workers 2`": ["--workers", "2"]}
    if not args.skip_ray and importlib.util.find_spec("ray") is not None:
        ways["`--ray local --cpus-per-worker 1`"] = ["--ray", "local", "--cpus-per-worker", "1"]
    for number, (name, extra) in enumerate(ways.items()):
        rows.append((name, *cohort(work / "cases", work / f"cohort{number}", args.model, *extra)))
    print("\n| way | wall time | cases per minute | segmentation per case (run log) |\n|---|---|---|---|")
    for name, wall, per_case in rows:
        seconds = "—" if per_case is None else f"{per_case:.2f} s"
        print(f"| {name} | {wall:.1f} s | {len(cases) / wall * 60:.1f} | {seconds} |")
    loop_per_case = rows[0][1] / len(cases)
    saved = loop_per_case - rows[1][2]
    print(f"\nPer case, the shell loop takes {loop_per_case:.2f} s, of which {rows[1][2]:.2f} s is segmentation: "
          f"batching saves {saved:.2f} s of start-up, imports and model loading per case "
          f"({saved * len(cases):.0f} s over {len(cases)} cases). Load average at the end: {os.getloadavg()[0]:.1f} "
          "(other processes on this machine slow every way down).")  # fmt: skip


if __name__ == "__main__":
    main()
