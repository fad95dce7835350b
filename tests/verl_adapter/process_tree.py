"""Run a command whose processes must all end: a ``main_ppo`` run with its Ray and vLLM processes.

A failed weight sync into vLLM leaves ``main_ppo`` waiting forever with every process alive, and Ray's and vLLM's
processes may outlive a driver that exits. :func:`run_to_the_end` starts the command in a session of its own,
notes every process descended from it while it runs, and, when the command exits, waits for all of them to end;
at the time limit, or for any still alive after the grace period, it kills them all (the whole process group as
well) and says so in its result, so that a hang fails one test instead of stalling CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

POLL_S = 1.0
GRACE_S = 60.0


@dataclass
class Finished:
    """How a command ended: its exit status (None when killed at the time limit), its output, and the
    descendants that outlived it (``pid name``; killed)."""

    returncode: int | None
    output: str
    wall_s: float
    left_running: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.left_running


def _descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def run_to_the_end(command: list[str], *, env: dict[str, str], timeout_s: float, log: Path) -> Finished:
    """Run ``command`` with its output in ``log``; every process it started must have ended when this returns."""
    start = time.monotonic()
    with log.open("w") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(child.pid)
        seen: dict[tuple[int, float], psutil.Process] = {}
        while child.poll() is None and time.monotonic() - start < timeout_s:
            for process in _descendants(root):
                with contextlib.suppress(psutil.NoSuchProcess):
                    seen.setdefault((process.pid, process.create_time()), process)
            time.sleep(POLL_S)
        returncode = child.poll()
        if returncode is None:  # the time limit: everything goes
            _kill([*_descendants(root), *seen.values()])
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        wall_s = time.monotonic() - start
        alive = [process for process in seen.values() if process.is_running()]
        _, alive = psutil.wait_procs(alive, timeout=GRACE_S if returncode is not None else 0)
        left_running = []
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                left_running.append(f"{process.pid} {process.name()}")
        _kill(alive)
    return Finished(returncode, log.read_text(errors="replace"), wall_s, left_running)
