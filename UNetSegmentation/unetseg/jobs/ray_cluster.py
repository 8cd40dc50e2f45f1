"""A cohort on a Ray cluster (``--ray [ADDRESS]``, the optional ``unetseg[cluster]`` extra): one model-holding actor
per GPU, or per ``--cpus-per-worker`` CPUs on CPU nodes; inputs and outputs on a filesystem every node shares.

The coordinator (`cohort.run_cohort`) stays on this machine: it picks the cases, writes the run log and applies
the resume rules exactly as for local workers; the actors only segment. ADDRESS is ``auto`` (the cluster this
machine joined with ``ray start``), ``ray://HOST:10001`` (Ray Client) or ``local`` (a private instance on this
machine, bound to the loopback interface, stopped at the end). If this process is already connected to Ray (a
script called ``ray.init``), that connection is used and left open.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from unetseg.jobs.cohort_inputs import Case
from unetseg.jobs.cohort_workers import CaseRunner, RunSettings, failed_start

DEFAULT_CPUS_PER_WORKER = 4
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20  # only paths and small records travel through Ray's object store
# A private local instance: loopback addresses only (Ray's switch for clusterless machines), no usage reports.
LOCAL_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> Any:
    """The ray module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'unetseg[cluster]' (or pip install 'ray>=2').") from None
    return ray


def connect(address: str) -> bool:
    """Connect to Ray at ``address`` unless this process already is; True when this call connected (and so
    `RayPool.close` disconnects)."""
    if address == "local":  # read when ray is first imported
        for name, value in LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     logging_level="WARNING", log_to_driver=False)  # fmt: skip
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError) as error:
        raise ValueError(
            f"Could not connect to a Ray cluster at {address!r} ({str(error).strip().splitlines()[0]}). Start one "
            "with `ray start --head` (then --ray auto), give its Ray Client address (--ray ray://HOST:10001), or "
            "use --ray local for a private instance on this machine."
        ) from error
    return True


class RayCaseActor:
    """A Ray actor holding the model: `run` segments one case at a time; `cancel` (served concurrently) stops it."""

    def __init__(self, settings: RunSettings, gpu: bool) -> None:
        self._cancel = threading.Event()
        self._runner: CaseRunner | None = None
        self._error: BaseException | None = None
        try:
            if gpu:
                import ray

                settings = replace(settings, gpu=str(ray.get_gpu_ids()[0]))
            self._runner = CaseRunner(settings)
        except Exception as error:  # reported with each case, which ends the cohort
            self._error = error

    def run(self, case: Case) -> dict[str, Any]:
        return self._runner.run(case, self._cancel) if self._runner is not None else failed_start(self._error)

    def cancel(self) -> None:
        self._cancel.set()


class RayPool:
    """Actors on a Ray cluster, as many as it holds (GPUs, or CPUs / ``cpus_per_worker``), at most ``workers``
    and the number of cases; a case goes to an idle actor. An actor whose process dies restarts (reloading the
    model); the case it was running fails."""

    def __init__(self, address: str, settings: RunSettings, workers: int | None, cpus_per_worker: int | None,
                 cases: int) -> None:  # fmt: skip
        self._ray = import_ray()
        self._owns = connect(address)
        try:
            self._actors = self._start(settings, workers, cpus_per_worker, cases)
        except BaseException:
            self.close()
            raise
        self.slots = len(self._actors)
        self._busy: list[Future | None] = [None] * self.slots

    def _start(self, settings: RunSettings, workers: int | None, cpus_per_worker: int | None, cases: int) -> list:
        resources = self._ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        use_gpu = settings.device == "cuda" or (settings.device == "auto" and gpus > 0)
        if use_gpu and not gpus:
            raise ValueError("--device cuda was asked for but the Ray cluster has no GPUs; use --device cpu or auto.")
        per_worker = cpus_per_worker or (1 if use_gpu else min(DEFAULT_CPUS_PER_WORKER, max(cpus, 1)))
        if not use_gpu and per_worker > cpus:
            raise ValueError(f"Each worker needs {per_worker} CPUs (--cpus-per-worker) but the Ray cluster has {cpus}.")
        capacity = gpus if use_gpu else cpus // per_worker
        count = max(1, min(workers or capacity, capacity, cases))
        options = {"num_cpus": per_worker, "num_gpus": 1 if use_gpu else 0, "max_concurrency": 2, "max_restarts": 3}
        actor = self._ray.remote(RayCaseActor).options(**options)
        worker_settings = replace(settings, threads=per_worker, device="cuda" if use_gpu else "cpu")
        return [actor.remote(worker_settings, use_gpu) for _ in range(count)]

    def submit(self, case: Case) -> Future:
        idle = next(i for i, future in enumerate(self._busy) if future is None or future.done())
        future = self._actors[idle].run.remote(case).future()
        self._busy[idle] = future
        return future

    def recover(self, future: Future) -> None:
        """Nothing to do: Ray restarts a dead actor by itself."""

    def cancel(self) -> None:
        for actor in self._actors:
            actor.cancel.remote()

    def close(self) -> None:
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor)
        if self._owns:
            self._ray.shutdown()
