"""The background-process runner: events from a real child, the package found without an install, tree kill."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unetseg import __version__
from unetseg.jobs.process import PACKAGE_ROOT, BackgroundProcess

NO_PYTHONPATH = {"PYTHONPATH": ""}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python without the editable install: a fresh venv without site packages (as inside Slicer)."""
    venv = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))


def _write_module(folder: Path, name: str, code: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(code))


def _events_until(proc: BackgroundProcess, predicate, timeout: float = 20.0) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    while not any(predicate(e) for e in events):
        assert time.monotonic() < deadline, f"no expected event; got {events}, stderr {proc.stderr}"
        events += proc.poll()
        time.sleep(0.02)
    return events


def _alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie waiting for a reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] == "Z")


def test_child_finds_the_package_from_an_unrelated_folder_without_an_install(bare_python, tmp_path):
    proc = BackgroundProcess(["--version"], python=bare_python, env=NO_PYTHONPATH, cwd=tmp_path).start()
    assert proc.wait(60) == 0, proc.stderr
    assert {"type": "log", "message": f"unetseg {__version__}"} in proc.poll()


def test_without_the_package_folder_on_the_path_the_bare_python_fails(bare_python, tmp_path):
    proc = BackgroundProcess(["--version"], python=bare_python, pythonpath=[], env=NO_PYTHONPATH, cwd=tmp_path)
    assert proc.start().wait(60) != 0
    assert "No module named unetseg" in proc.stderr


def test_events_arrive_in_order_with_stderr_and_exit_code(tmp_path):
    _write_module(
        tmp_path,
        "fakejob",
        """
        import sys
        from unetseg.jobs.progress import ProgressEmitter
        emit = ProgressEmitter()
        emit(0.5, "window", "half way")
        print("a plain line", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        emit.result(output="seg.nrrd")
        sys.exit(3)
    """,
    )
    proc = BackgroundProcess([], pythonpath=[PACKAGE_ROOT, tmp_path], module="fakejob", cwd=tmp_path)
    assert proc.returncode is None and not proc.running
    assert proc.start().wait(60) == 3
    events = proc.poll()
    stdout_events = [e for e in events if e.get("stream") != "stderr"]
    assert stdout_events == [
        {"type": "progress", "stage": "window", "fraction": 0.5, "message": "half way"},
        {"type": "log", "message": "a plain line"},
        {"type": "result", "output": "seg.nrrd"},
    ]
    assert {"type": "log", "stream": "stderr", "message": "a warning"} in events
    assert proc.stderr == "a warning\n"
    assert proc.returncode == 3 and not proc.running and not proc.cancelled
    assert proc.poll() == []


def test_poll_does_not_block_and_wait_times_out(tmp_path):
    _write_module(tmp_path, "sleeper", "import time; print('up', flush=True); time.sleep(60)\n")
    proc = BackgroundProcess([], pythonpath=[tmp_path], module="sleeper").start()
    try:
        _events_until(proc, lambda e: e["message"] == "up")
        t0 = time.monotonic()
        assert proc.poll() == []
        assert time.monotonic() - t0 < 0.5
        assert proc.running and proc.returncode is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    finally:
        proc.cancel()
    assert not proc.running and proc.cancelled and proc.returncode != 0


@pytest.mark.skipif(sys.platform == "win32", reason="zombie check reads /proc; Windows uses taskkill /T")
def test_cancel_kills_the_child_and_its_grandchild(tmp_path):
    _write_module(
        tmp_path,
        "spawner",
        """
        import subprocess, sys, time
        from unetseg.jobs.progress import ProgressEmitter
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        ProgressEmitter().result(grandchild=grandchild.pid)
        time.sleep(120)
    """,
    )
    proc = BackgroundProcess([], pythonpath=[PACKAGE_ROOT, tmp_path], module="spawner").start()
    events = _events_until(proc, lambda e: e["type"] == "result")
    grandchild = next(e["grandchild"] for e in events if e["type"] == "result")
    assert _alive(grandchild)

    proc.cancel()
    assert proc.cancelled and proc.returncode is not None and proc.returncode < 0
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_process_starts_once_and_puts_its_paths_first(tmp_path):
    proc = BackgroundProcess(["--version"], pythonpath=[tmp_path], env={"PYTHONPATH": "/elsewhere"})
    assert proc.command == [sys.executable, "-m", "unetseg", "--version"]
    assert proc.child_env()["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    assert BackgroundProcess([]).child_env()["PYTHONPATH"].split(os.pathsep)[0] == str(PACKAGE_ROOT)
    proc.start().wait(60)
    with pytest.raises(RuntimeError, match="already started"):
        proc.start()


def test_a_missing_python_is_a_clear_error_and_a_name_on_path_is_found(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Python executable not found"):
        BackgroundProcess([], python=str(tmp_path / "PythonSlicer")).start()
    executable = Path(sys.executable)
    monkeypatch.setenv("PATH", f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert BackgroundProcess(["--version"], python=executable.name).start().wait(60) == 0
