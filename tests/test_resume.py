"""Preemption: a run killed with SIGKILL in the middle of its second epoch and resumed with `ckpt_path=last` ends with
the weights of a run that was never interrupted; `last.ckpt` of a finished run is its final state; a SLURM requeue
(SIGUSR1 under faked SLURM variables) writes Lightning's HPC checkpoint and the requeued job resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import synthetic_overrides
from subprocs import TIMEOUT, child_env, launch, wait_ok

STEPS_PER_EPOCH = 8  # 8 classes x 4 videos / batch 4


@pytest.fixture(scope="module")
def data_overrides(tmp_path_factory) -> list[str]:
    return [
        *synthetic_overrides(tmp_path_factory.mktemp("data") / "synthetic", train_per_class=4),
        # every source of randomness on: augmentation, mixup / cutmix, drop path
        "data.randaug_n=2",
        "data.random_erasing=0.25",
        "data.mixup_alpha=0.8",
        "data.cutmix_alpha=1.0",
        "data.flip=true",
        "++model.kwargs.drop_path_rate=0.1",
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]


def _start(run_dir: Path, overrides: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "videorec.train", *overrides, f"hydra.run.dir={run_dir}"]
    return launch(cmd, run_dir.parent, log, env, append=True)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    wait_ok([proc], [log], "the run")


def _step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return -1  # not written yet


def _kill_when(proc: subprocess.Popen, path: Path, condition, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition(path):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the point to kill it")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(tmp_path, data_overrides):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_log, resumed_log = tmp_path / "straight.log", tmp_path / "resumed.log"
    _finish(_start(straight_dir, data_overrides, straight_log), straight_log)
    straight = straight_dir / "checkpoints" / "last.ckpt"
    final = torch.load(straight, weights_only=True)
    # last.ckpt of a finished run is its final state: every step of both epochs
    assert final["global_step"] == 2 * STEPS_PER_EPOCH and final["epoch"] == 1

    last = resumed_dir / "checkpoints" / "last.ckpt"
    proc = _start(resumed_dir, data_overrides, resumed_log)
    _kill_when(proc, last, lambda p: _step(p) >= STEPS_PER_EPOCH + 3, resumed_log)
    killed_at = _step(last)
    assert STEPS_PER_EPOCH < killed_at < 2 * STEPS_PER_EPOCH, f"killed at step {killed_at}, not inside epoch 2"

    _finish(_start(resumed_dir, [*data_overrides, "ckpt_path=last"], resumed_log), resumed_log)
    assert f"Restored all states from the checkpoint at {last}" in resumed_log.read_text()
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == final["global_step"]
    a, b = _weights(straight), resumed["state_dict"]
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert diff < 1e-6, f"resumed weights differ by {diff}"


def test_slurm_requeue_writes_the_hpc_checkpoint_and_the_requeued_job_resumes(tmp_path, data_overrides):
    """SIGUSR1 under SLURM: Lightning's SLURMEnvironment saves hpc_ckpt_1.ckpt and calls `scontrol requeue`; the job
    comes back with the same id, hence the same run folder, and `ckpt_path=auto` resumes from that checkpoint."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "videorec",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    logs = tmp_path / "logs"
    run_dir = logs / "train" / "runs" / "slurm-4242"  # named after the job: the same folder after the requeue
    overrides = [o for o in data_overrides if "every_n_train_steps" not in o]  # last.ckpt only at epoch ends here
    cmd = [sys.executable, "-m", "videorec.train", *overrides, "trainer.max_epochs=3", "ckpt_path=auto"]
    log = tmp_path / "job.log"
    env = child_env(VIDEOREC_LOG_DIR=str(logs), **slurm)
    proc = launch(cmd, tmp_path, log, env, append=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + TIMEOUT
    while "SLURM auto-requeueing enabled" not in log.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.02)
    time.sleep(0.5)  # into the first epoch
    proc.send_signal(signal.SIGUSR1)
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    _kill_when(proc, hpc, lambda p: _step(p) >= 0 and calls.is_file(), log)  # preempted after the requeue
    assert calls.read_text().split() == ["requeue", "4242"]
    assert _step(hpc) < 3 * STEPS_PER_EPOCH

    _finish(launch(cmd, tmp_path, log, env, append=True), log)  # the requeued job: same command, same job id
    text = log.read_text()
    assert (
        f"ckpt_path=auto: resuming from {hpc}" in text and f"Restored all states from the checkpoint at {hpc}" in text
    )
    assert _step(last) == 3 * STEPS_PER_EPOCH
    assert [p.name for p in (logs / "train" / "runs").iterdir()] == ["slurm-4242"]
