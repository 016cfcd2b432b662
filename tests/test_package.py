"""The configs live in the top-level conf/ folder and ship inside the wheel: a non-editable install composes every
entry point from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT

ENTRY_POINTS = {
    "videorec.train": [],
    "videorec.eval": ["ckpt_path=some.ckpt"],
    "videorec.predict": ["ckpt_path=some.ckpt", "input=clips/"],
    "videorec.export": ["ckpt_path=some.ckpt", "format=onnx"],
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, timeout=300, cwd=out)
    (path,) = out.glob("videorec-*.whl")
    return path


def test_wheel_holds_every_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "videorec").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel (pyproject's packages list)"
    configs = {f"videorec/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)


def test_installed_wheel_composes_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import videorec.conf as c; print(c.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)
    for module, overrides in ENTRY_POINTS.items():
        run = subprocess.run(
            [sys.executable, "-m", module, *overrides, "--cfg", "job"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, f"{module}: {run.stderr[-2000:]}"
        assert f"task_name: {module.split('.')[1]}" in run.stdout
    assert not (elsewhere / "logs").exists()  # --cfg job composes without running
