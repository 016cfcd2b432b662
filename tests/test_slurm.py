"""SLURM launch as users do it: the submitit launcher config composes (hydra/launcher=slurm), and the sbatch example
runs as written with a stand-in `srun` that composes the job (`--cfg job`) instead of training. The requeue itself
(SIGUSR1, HPC checkpoint, resume) is exercised in test_resume.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, **extra}


def test_submitit_launcher_config_composes(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "videorec.train", "hydra/launcher=slurm", "hydra.launcher.nodes=2", "--cfg", "hydra"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["nodes"] == 2 and launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8
    assert launcher["max_num_timeout"] > 0 and launcher["signal_delay_s"] > 0


def test_sbatch_example_runs_as_written(tmp_path):
    script = ROOT / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    header = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=USR1@120" in header and "#SBATCH --requeue" in header  # what auto-requeue needs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@" --cfg job\n')  # compose the job instead of training
    (bin_dir / "srun").chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # this environment's Python
    (bin_dir / "python").chmod(0o755)
    env = _env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="8"
    )
    out = subprocess.run(
        ["bash", str(script), "model=mvit_b", "data=k400", "data.root=/data/k400"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    job = yaml.safe_load(out.stdout)
    assert job["trainer"]["num_nodes"] == 2 and job["trainer"]["devices"] == 8 and job["trainer"]["strategy"] == "ddp"
    assert job["ckpt_path"] == "auto" and job["model"]["name"] == "mvit_b" and job["trainer"]["max_epochs"] == 200
    assert (tmp_path / "logs" / "slurm").is_dir()
