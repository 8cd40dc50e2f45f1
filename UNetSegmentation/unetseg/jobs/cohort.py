"""A cohort run of `unetseg predict`: many cases, the model loaded once per worker, nothing lost, nothing repeated.

The coordinator (this process) lists the cases (`cohort_inputs`), skips those the run log says are complete
(`run_log`; ``--overwrite`` redoes them), hands the rest to a pool — this process, N worker processes
(`cohort_workers`) or Ray actors (`ray_cluster`) — and records every case's outcome in the run log as it comes
back. A failing case is recorded with its error and the cohort goes on; a worker that cannot start ends it. At
the end: a summary (succeeded, skipped, failed) and exit code 4 if any case failed. The first Ctrl-C (or
SIGTERM) stops the running cases at their next window batch, writing nothing; finished cases stay, and the
rerun resumes.
"""

from __future__ import annotations

from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from unetseg.jobs.cohort_inputs import OUTPUT_SUFFIXES, Case, find_cases, output_suffix
from unetseg.jobs.cohort_progress import CohortProgress
from unetseg.jobs.cohort_workers import InlinePool, ProcessPool, RunSettings
from unetseg.jobs.predict_case import work_limits
from unetseg.jobs.ray_cluster import RayPool
from unetseg.jobs.run_log import RunLog, remove_stale_temporaries
from unetseg.jobs.runner import Job, JobCancelled, SomeCasesFailed, describe
from unetseg.models.catalog import load_model

# Options only a cohort takes, with their defaults (a single case refuses any other value).
COHORT_OPTIONS: dict[str, Any] = {"workers": None, "devices": None, "ray": None, "cpus_per_worker": None,
                                  "overwrite": False}  # fmt: skip
_POLL_SECONDS = 0.5  # how often the coordinator looks at the cancel event while cases run


def run_cohort(job: Job, options: dict[str, Any]) -> None:
    """`unetseg predict` on a folder, glob or CSV/TSV list: segment every case into ``-o OUT_DIR``."""
    out_dir = Path(options["output"]).expanduser().absolute()
    if (out_dir.exists() and not out_dir.is_dir()) or (not out_dir.exists() and out_dir.name.endswith(OUTPUT_SUFFIXES)):
        raise ValueError(f"For a cohort, -o names the output folder; {out_dir} is (or looks like) a file. Give a "
                         "folder; --format chooses the files' format.")  # fmt: skip
    plan = _pool_plan(options)
    package = load_model(options["model"])
    cases = find_cases(options["input"][0], out_dir, package.input_names, output_suffix(options.get("format")))
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLog(out_dir, f"{package.name} {package.version}") as log:
        remove_stale_temporaries([case.output for case in cases])
        pending, counts = _skip_finished(cases, log, bool(options.get("overwrite")))
        for folder in {Path(case.output).parent for case in pending}:  # a CSV list may name sub-folders
            folder.mkdir(parents=True, exist_ok=True)
        pool = _make_pool(options, plan, len(pending), job) if pending else None
        try:  # the bar starts after the pool, whose start-up (Ray's) may print
            progress = CohortProgress(job, len(cases), counts)
            try:
                if pool is not None and not job.cancel.is_set():
                    _dispatch(pending, pool, log, progress, job)
            finally:
                progress.close()
        finally:
            if pool is not None:
                pool.close()
    _finish(job, out_dir, log, progress.counts, len(cases))


def _skip_finished(cases: list[Case], log: RunLog, overwrite: bool) -> tuple[list[Case], Counter]:
    """The cases to run; complete ones are skipped, cases that cannot run and untrusted outputs fail (all recorded)."""
    pending, counts = [], Counter()
    for case in cases:
        existing = None if overwrite else log.existing(case.output)
        if case.problem is not None or existing not in (None, "complete"):
            error = case.problem or f"{existing}: pass --overwrite to replace it."
            log.append(case=case.id, inputs=list(case.inputs), output=case.output, status="failed", error=error,
                       seconds=0.0, device=None)  # fmt: skip
            counts["failed"] += 1
        elif existing == "complete":
            log.append(case=case.id, inputs=list(case.inputs), output=case.output, status="skipped", error=None,
                       seconds=0.0, device=None)  # fmt: skip
            counts["skipped"] += 1
        else:
            pending.append(case)
    return pending, counts


def _pool_plan(options: dict[str, Any]) -> tuple[RunSettings, int | None, list[str] | None]:
    """The workers' settings, their number (None: as many as fit) and GPUs, checked before anything runs."""
    model, device = options["model"], options["device"]
    path = Path(model).expanduser()  # a model given as a path travels as an absolute one (other processes, nodes)
    devices = [d.strip() for d in options["devices"].split(",") if d.strip()] if options.get("devices") else None
    workers = options.get("workers")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1; got {workers}.")
    if devices and device not in ("auto", "cuda"):
        raise ValueError(f"--devices names GPUs but --device is {device}; use --device cuda (or auto).")
    if devices and options.get("ray") is not None:
        raise ValueError("--devices picks GPUs on this machine; on a Ray cluster each actor gets its own GPU.")
    if options.get("cpus_per_worker") is not None and options.get("ray") is None:
        raise ValueError("--cpus-per-worker applies to --ray; on this machine the CPUs are divided between --workers.")
    settings = RunSettings(str(path.absolute()) if path.exists() else model, "cuda" if devices else device,
                           options["tta"], options["postprocess"], options["backend"],
                           work_limits(options))  # fmt: skip
    return settings, workers, devices


def _make_pool(options: dict[str, Any], plan: tuple[RunSettings, int | None, list[str] | None], cases: int,
               job: Job) -> Any:  # fmt: skip
    """This process, worker processes (``--workers``, ``--devices``) or Ray actors (``--ray``)."""
    settings, workers, devices = plan
    if options.get("ray") is not None:
        return RayPool(options["ray"], settings, workers, options.get("cpus_per_worker"), cases)
    count = min(workers or (len(devices) if devices else 1), cases)
    if count == 1 and not devices:
        return InlinePool(settings, job.cancel)
    return ProcessPool(settings, count, devices, job.cancel)


def _dispatch(pending: list[Case], pool: Any, log: RunLog, progress: CohortProgress, job: Job) -> None:
    """Keep every slot of the pool busy until all cases came back or a cancel drained the running ones.

    Each case is logged as ``started`` before it is sent and with its outcome when it returns; however the loop
    ends (a second Ctrl-C, a worker that cannot start), the running cases are drained and logged first, so no
    written output goes unrecorded.
    """
    queue, running = deque(pending), {}
    try:
        while queue or running:
            while queue and len(running) < pool.slots and not job.cancel.is_set():
                case = queue.popleft()
                log.append(case=case.id, inputs=list(case.inputs), output=case.output, status="started")
                running[pool.submit(case)] = case
            if job.cancel.is_set():
                queue.clear()
            if not running:
                break
            done, _ = wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            fatal = [_log(running.pop(future), _record_of(future, pool), log, progress) for future in done]
            if any(fatal):  # a worker could not start: the reason is the run's error
                raise ValueError(next(error for error in fatal if error))
    finally:
        _drain(running, pool, log)


def _log(case: Case, record: dict[str, Any], log: RunLog, progress: CohortProgress | None) -> str | None:
    """Log a case's outcome; return the error of a worker that could not start (that case never ran)."""
    if record.pop("fatal", False):
        log.append(case=case.id, inputs=list(case.inputs), output=case.output, status="cancelled",
                   error=record["error"], seconds=0.0, device=None)  # fmt: skip
        return record["error"]
    log.append(case=case.id, inputs=list(case.inputs), output=case.output, **record)
    if progress is not None:
        progress.advance(case, record)
    return None


def _record_of(future: Future, pool: Any) -> dict[str, Any]:
    """A finished case's record; a worker that died (the future failed) fails its case, and the pool recovers."""
    try:
        return future.result()
    except Exception as error:
        pool.recover(future)
        return {"status": "failed", "seconds": None, "device": None,
                "error": f"The worker stopped while segmenting this case ({describe(error)}); it may have run out "
                         "of memory."}  # fmt: skip


def _drain(running: dict[Future, Case], pool: Any, log: RunLog) -> None:
    """Stop the running cases (at their next window batch: they write nothing) and log how each ended."""
    if running:
        pool.cancel()
    for future, case in list(running.items()):
        _log(case, _record_of(future, pool), log, None)
        running.pop(future)


def _finish(job: Job, out_dir: Path, log: RunLog, counts: Counter, total: int) -> None:
    """The summary (a result event), then the exit: cancelled (3), some cases failed (4), or success."""
    done, skipped, failed = counts["succeeded"], counts["skipped"], counts["failed"]
    left = total - done - skipped - failed
    text = (f"{done} succeeded, {skipped} skipped (already complete), {failed} failed"
            + (f", {left} not run (cancelled: rerun to resume)" if left else "")
            + f" of {total} cases in {out_dir}; run log {log.path}")  # fmt: skip
    job.result(text, output_dir=out_dir, run_log=log.path, cases=total, succeeded=done, skipped=skipped,
               failed=failed, not_run=left)  # fmt: skip
    if job.cancel.is_set() and left:
        raise JobCancelled(f"Cohort cancelled after {done + skipped + failed} of {total} cases; rerun to resume.")
    if failed:
        raise SomeCasesFailed(f"{failed} of {total} cases failed; each is in the run log {log.path} with its error.")
