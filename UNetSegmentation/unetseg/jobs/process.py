"""Run `python -m unetseg …` in a background process the GUI can poll and cancel.

Plain Python (subprocess plus reader threads, no Qt), so the Slicer panel polls it from a QTimer, the
logic's blocking mode waits on it, and headless tests drive it the same way. Inside Slicer the core is
not pip-installed but lives in the module's folder, so the runner puts that folder on the child's
PYTHONPATH itself. Cancel kills the whole process tree (data-loader workers and the like included).
`BackgroundRun` is one such process seen as a job: polled to its end, then finished on the caller's thread.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from unetseg.jobs.progress import parse_progress_line

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``unetseg`` package (the Slicer module's folder)."""

_STDERR_LINES_KEPT = 2000


class BackgroundProcess:
    """One run of ``python -m <module> <args>``: JSON-lines events from stdout, stderr kept for errors.

    ``pythonpath`` is prepended to the child's PYTHONPATH; ``None`` means ``[PACKAGE_ROOT]``, so the
    child imports this very copy of the core. ``env`` holds extra variables set on top of this
    process's environment. stderr lines are also delivered as ``{"type": "log", "stream": "stderr"}``
    events, so warnings reach the log box while the run is going.
    """

    def __init__(
        self,
        args: list[str],
        python: str = sys.executable,
        pythonpath: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        module: str = "unetseg",
    ) -> None:
        self.args = [str(a) for a in args]
        self.python = str(python)
        self.pythonpath = [str(PACKAGE_ROOT)] if pythonpath is None else [str(p) for p in pythonpath]
        self.extra_env = dict(env or {})
        self.cwd = cwd
        self.module = module
        self.cancelled = False
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES_KEPT)
        self._readers: list[threading.Thread] = []

    @property
    def command(self) -> list[str]:
        """The full command line the child runs."""
        return [self.python, "-m", self.module, *self.args]

    def child_env(self) -> dict[str, str]:
        """The child's environment: ours, plus ``env``, with ``pythonpath`` in front of PYTHONPATH."""
        env = {**os.environ, **self.extra_env}
        paths = [*self.pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive as they are printed
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    def start(self) -> BackgroundProcess:
        """Launch the child (once) in its own process group; returns self."""
        if self._proc is not None:
            raise RuntimeError("This process was already started; create a new BackgroundProcess to rerun.")
        if shutil.which(self.python) is None:
            raise FileNotFoundError(
                f"Python executable not found: {self.python}. Inside Slicer pass the path of PythonSlicer; "
                "elsewhere sys.executable."
            )
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=self.child_env(),
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **_new_group_kwargs(),
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def poll(self) -> list[dict]:
        """The events that arrived since the last call, without blocking."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        """True from start until the child has exited and all its output has been read."""
        if self._proc is None:
            return False
        return self._proc.poll() is None or any(r.is_alive() for r in self._readers)

    @property
    def returncode(self) -> int | None:
        """The child's exit code; None while running or before start (negative: killed by a signal)."""
        if self._proc is None or self.running:
            return None
        return self._proc.returncode

    @property
    def stderr(self) -> str:
        """The child's stderr so far (the last lines), for error messages."""
        return "".join(self._stderr)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child has exited and its output is read; raises TimeoutExpired on timeout."""
        if self._proc is None:
            raise RuntimeError("The process was not started.")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._proc.wait(timeout)
        for reader in self._readers:  # a descendant that escaped the kill could hold the pipes open
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.command, timeout or 0.0, stderr=self.stderr)
        return self._proc.returncode

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the child and every process it started, then reap it."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.cancelled = True
        _kill_tree(self._proc)
        self.wait(timeout)

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            event = parse_progress_line(line)
            if event is not None:
                self._events.put(event)
        stream.close()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line)
            if line.strip():
                self._events.put({"type": "log", "stream": "stderr", "message": line.rstrip("\r\n")})
        stream.close()


class BackgroundRun:
    """One background job (a segmentation or a training run) that the caller polls from its own (GUI) thread.

    ``poll()`` forwards the child's events to ``progress_callback`` and, once the child has exited, finishes
    the job on the polling thread (a Slicer scene is only touched there): ``finish(run)`` gives ``result`` on
    success, otherwise ``error`` says what went wrong. ``cleanup()`` (temporary files) runs in every case.
    """

    def __init__(
        self,
        process: BackgroundProcess,
        finish: Callable[[BackgroundRun], Any],
        cleanup: Callable[[], None],
        progress_callback: Callable[[dict], None] | None = None,
    ) -> None:
        self.process = process
        self.progress_callback = progress_callback
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.cancelled = False
        self.events: list[dict] = []
        self._finish = finish
        self._cleanup = cleanup
        self._done = False

    @property
    def running(self) -> bool:
        """True until the job has finished (successfully or not)."""
        return not self._done

    @property
    def succeeded(self) -> bool:
        """True once the job has finished without error."""
        return self._done and self.error is None

    @property
    def warnings(self) -> list[str]:
        """The messages of the child's result: what the user must see (e.g. an input unlike the model's data)."""
        return [str(m) for e in self.events if e.get("type") == "result" for m in e.get("messages") or []]

    def start(self) -> BackgroundRun:
        """Launch the child process; on failure to launch, clean up and re-raise."""
        try:
            self.process.start()
        except Exception:
            self._done = True
            self._cleanup()
            raise
        return self

    def poll(self) -> bool:
        """Forward new events; finish the job when the child is done. Returns True while still running."""
        if self._done:
            return False
        exited = not self.process.running
        for event in self.process.poll():
            self._report(event)
        if exited:
            self._complete()
        return not self._done

    def cancel(self) -> None:
        """Kill the child process tree; the job then finishes as cancelled on the next ``poll``."""
        if not self._done:
            self.process.cancel()
            self.poll()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Poll until the job is done and return its result; raise its error (TimeoutError after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"The background job did not finish within {timeout} s and was cancelled.")
            time.sleep(interval)
        if self.exception is not None:
            raise self.exception
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.result

    def _report(self, event: dict) -> None:
        self.events.append(event)
        if self.progress_callback is not None:
            self.progress_callback(event)

    def _complete(self) -> None:
        try:
            if self.process.cancelled:
                self.cancelled = True
                self.error = "Cancelled."
            elif self.process.returncode != 0:
                self.error = self._failure_message()
            else:
                self.result = self._finish(self)
        except Exception as exc:  # reported through `error`; `wait` re-raises it with its traceback
            self.exception = exc
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._done = True
            self._cleanup()
        if self.error is not None:
            self._report({"type": "error", "stage": "finished", "message": self.error})

    def _failure_message(self) -> str:
        """The child's own error event if it sent one, else the tail of its stderr."""
        errors = [e.get("message", "") for e in self.events if e.get("type") == "error"]
        if errors:
            return errors[-1]
        tail = "\n".join(self.process.stderr.strip().splitlines()[-15:])
        return f"The background process failed (exit code {self.process.returncode}).\n{tail}".strip()


def _new_group_kwargs() -> dict:
    """Popen arguments that start the child as the leader of its own process group."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a child and its descendants: its process group on POSIX, ``taskkill /T`` on Windows."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        if proc.poll() is None:
            proc.kill()
        return
    with contextlib.suppress(ProcessLookupError):  # the group is already gone: nothing left to kill
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session, so its pgid is its pid
