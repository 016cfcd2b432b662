"""The README is a contract: every `python -m videorec.*` and `torchrun ... -m videorec.*` line of its code blocks
composes as written (`--cfg job`; paths need not exist), and the lines that run on the embedded dataset also run,
shortened to one batch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"(?:^|\s)-m (videorec\.\w+)(.*)$")


def readme_commands(text: str) -> list[tuple[str, list[str], str]]:
    """(module, arguments, the line) for each videorec command line of the README's code blocks."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
            if not line.startswith(("python ", "torchrun ", "srun ")):
                continue
            match = COMMAND.search(line)
            if match:
                args = [a for a in shlex.split(match.group(2)) if a not in ("-m", "--multirun")]
                commands.append((match.group(1), args, line))
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def _run(module: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env={**env, "WANDB_MODE": "offline"},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_the_readme_has_its_commands():
    modules = {module for module, _, _ in COMMANDS}
    assert {"videorec.train", "videorec.eval"} <= modules and len(COMMANDS) >= 5
    assert any(line.startswith("torchrun ") for _, _, line in COMMANDS)


def test_a_broken_line_is_caught(tmp_path):
    """What the test below would report for a README line with a typo."""
    ((module, args, _),) = readme_commands("```bash\npython -m videorec.train model=mvit_b trainer.max_epoch=3\n```")
    out = _run(module, [*args, "--cfg", "job"], tmp_path)
    assert out.returncode != 0 and "max_epoch" in out.stderr


@pytest.mark.parametrize(("module", "args", "line"), COMMANDS, ids=[c[2][:60] for c in COMMANDS])
def test_readme_command_composes(module, args, line, tmp_path):
    out = _run(module, [*args, "--cfg", "job"], tmp_path)
    assert out.returncode == 0, f"README line fails to compose:\n  {line}\n{out.stderr[-3000:]}"
    assert "task_name:" in out.stdout


EMBEDDED = [
    c for c in COMMANDS if c[0] == "videorec.train" and not any(a.startswith(("data=", "data.root")) for a in c[1])
]


@pytest.mark.parametrize(("module", "args", "line"), EMBEDDED, ids=[c[2][:60] for c in EMBEDDED])
def test_readme_command_on_the_embedded_dataset_runs(module, args, line, tmp_path):
    smoke = [
        f"data.root={tmp_path / 'synthetic'}",
        "data.train_per_class=2",
        "data.val_per_class=1",
        "data.num_workers=0",
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    out = _run(module, [*args, *smoke], tmp_path, timeout=600)
    assert out.returncode == 0, f"README line fails to run:\n  {line}\n{out.stderr[-3000:]}"
