"""Where a cohort's cases run on one machine: in this process, or in N worker processes (one per GPU with
``--devices``), each loading the model once and segmenting case after case.

A pool offers ``slots`` (cases it runs at once), ``submit(case) -> Future`` of the case's result record,
``recover(future)`` after a worker died, ``cancel()`` (running cases stop at their next window batch, writing
nothing) and ``close()``. `ray_cluster.RayPool` offers the same on a Ray cluster.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from unetseg.inference.limits import WorkLimits
from unetseg.inference.predictor import SegmentationCancelled
from unetseg.jobs.cohort_inputs import Case
from unetseg.jobs.predict_case import predict_to_file
from unetseg.jobs.runner import USER_ERRORS, describe
from unetseg.models.catalog import load_model


@dataclass(frozen=True)
class RunSettings:
    """What every worker needs to segment (picklable): the model (catalog name or absolute path) and options."""

    model: str
    device: str = "auto"
    tta: bool | None = None
    postprocess: bool | None = None
    backend: str = "torch"
    limits: WorkLimits | None = None  # memory and window ceilings of one segmentation
    threads: int | None = None  # torch threads per worker (None: torch's default)
    gpu: str | None = None  # the physical GPU this worker sees as cuda:0 (CUDA_VISIBLE_DEVICES)


class CaseRunner:
    """The model, loaded once, and the settings; `run` segments one case and returns its run-log record."""

    def __init__(self, settings: RunSettings) -> None:
        if settings.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = settings.gpu  # before torch sees the GPUs
        if settings.threads:
            os.environ["OMP_NUM_THREADS"] = str(settings.threads)
            if importlib.util.find_spec("torch") is not None:
                import torch

                torch.set_num_threads(settings.threads)
        self.settings = settings
        self.package = load_model(settings.model)
        self.device = device_name(settings)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, case: Case, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Segment ``case``: a record with status done (and the output's size), failed (and why) or cancelled."""
        start = time.perf_counter()
        record: dict[str, Any] = {"device": self.device, "worker": self.worker}
        s = self.settings
        try:
            path, messages = predict_to_file(case.inputs, self.package, case.output, s.device, s.tta, s.postprocess,
                                             s.backend, cancel=cancel, limits=s.limits)  # fmt: skip
            record.update(status="done", error=None, bytes=path.stat().st_size, messages=messages)
        except SegmentationCancelled:
            record.update(status="cancelled", error=None)
        except USER_ERRORS as error:
            record.update(status="failed", error=describe(error))
        except Exception as error:  # a bug, or a library's error on a strange file: record it, keep going
            record.update(status="failed", error=f"{type(error).__name__}: {describe(error)}",
                          traceback=traceback.format_exc(limit=8))  # fmt: skip
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record


def device_name(settings: RunSettings) -> str:
    """The device a worker segments on, for the run log: "cpu", "cuda:1" (the physical GPU), "onnx:auto"…"""
    if settings.backend == "onnx" or importlib.util.find_spec("torch") is None:
        return f"onnx:{settings.device}"
    from unetseg.devices import resolve_device  # lazy: torch

    device = str(resolve_device(settings.device))
    return f"cuda:{settings.gpu}" if settings.gpu is not None and device.startswith("cuda") else device


def failed_start(error: BaseException) -> dict[str, Any]:
    """The record of every case sent to a worker that could not start (no such device…): it ends the cohort."""
    return {"status": "failed", "fatal": True, "error": f"A worker could not start: {describe(error)}", "seconds": 0.0}


class InlinePool:
    """One worker: this process (no start-up cost; a worker that cannot start is the run's error at once). The
    running case sees the job's own cancel event, so Ctrl-C reaches it directly."""

    slots = 1

    def __init__(self, settings: RunSettings, cancel: threading.Event) -> None:
        self._runner = CaseRunner(settings)
        self._cancel = cancel

    def submit(self, case: Case) -> Future:
        future: Future = Future()
        future.set_result(self._runner.run(case, self._cancel))
        return future

    def recover(self, future: Future) -> None:
        """Nothing to recover: this process is still here."""

    def cancel(self) -> None:
        """Nothing to do: cases run one at a time inside `submit`, and see the job's cancel event."""

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------------------------------ worker processes

_runner: CaseRunner | None = None
_start_error: BaseException | None = None
_cancel_event: Any = None


def _start_worker(settings: RunSettings, gpus: Any, cancel: Any) -> None:
    """A worker process's start: ignore Ctrl-C (the coordinator decides), take a GPU, load the model."""
    global _runner, _start_error, _cancel_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cancel_event = cancel
    try:
        _runner = CaseRunner(replace(settings, gpu=gpus.get(timeout=60) if gpus is not None else None))
    except Exception as error:  # reported with the first case: a pool cannot report its initializer's errors
        _start_error = error


def _run_in_worker(case: Case) -> dict[str, Any]:
    return _runner.run(case, _cancel_event) if _runner is not None else failed_start(_start_error)


class ProcessPool:
    """N worker processes (spawned: no inherited threads or CUDA state); torch threads and, unless given, the
    memory ceiling divided between them; one GPU each with ``devices``. A worker that dies (out of memory, a
    crash) fails its case; the pool is started again for the rest."""

    def __init__(self, settings: RunSettings, workers: int, devices: list[str] | None, cancel: threading.Event):
        self.slots = workers
        self._context = multiprocessing.get_context("spawn")
        self._cancel = self._context.Event()
        self._stop = cancel
        limits = settings.limits or WorkLimits()
        if limits.max_memory_gb is None:  # the machine's default share, split: the workers run at once
            limits = replace(limits, max_memory_gb=limits.memory_bytes() / workers / 1024**3)
        threads = settings.threads or max(1, (os.cpu_count() or 1) // workers)
        self._settings = replace(settings, threads=threads, limits=limits)
        self._devices = devices
        self._executor, self._futures = self._start()

    def _start(self) -> tuple[ProcessPoolExecutor, set[Future]]:
        gpus = None
        if self._devices:
            gpus = self._context.Queue()
            for number in range(self.slots):
                gpus.put(self._devices[number % len(self._devices)])
        executor = ProcessPoolExecutor(self.slots, mp_context=self._context, initializer=_start_worker,
                                       initargs=(self._settings, gpus, self._cancel))  # fmt: skip
        return executor, set()

    def submit(self, case: Case) -> Future:
        future = self._executor.submit(_run_in_worker, case)
        self._futures.add(future)
        return future

    def recover(self, future: Future) -> None:
        """Start new workers after a worker died (once per breakdown: its other futures failed with it)."""
        if future in self._futures and not self._stop.is_set():
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor, self._futures = self._start()

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        self._cancel.set()  # a case still running (a second Ctrl-C) stops at its next window batch
        self._executor.shutdown(wait=True, cancel_futures=True)
