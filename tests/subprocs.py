"""Running videorec's command lines as child processes, the way users run them (python -m, torchrun): a clean
environment, a free port for the rendezvous, and a wait that kills every child and fails the test with the logs'
tails when one hangs, instead of blocking CI."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

TIMEOUT = 300  # seconds; a run that deadlocks is killed and fails the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the launcher variables of an outer SLURM job or torchrun, one compute thread per
    process, W&B offline, unbuffered output; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "LOCAL_RANK"))}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **extra}


def launch(cmd: Sequence[str], cwd: Path, log: Path, env: dict[str, str] | None = None, append: bool = False):
    """Start ``cmd`` with its output in ``log``."""
    with open(log, "a" if append else "w") as out:  # the child keeps its own handle
        return subprocess.Popen(list(cmd), cwd=cwd, env=env or child_env(), stdout=out, stderr=subprocess.STDOUT)


def wait_ok(procs: Sequence[subprocess.Popen], logs: Sequence[Path], what: str = "a process") -> None:
    """Wait for every process; fail naming ``what`` if one runs past TIMEOUT (all are killed), or if one exits
    non-zero."""
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
        pytest.fail(f"{what} hung for more than {TIMEOUT} s\n{tails}")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, f"{log.name}: exit {p.returncode}\n{log.read_text()[-4000:]}"
