"""Shared fixtures: composing the real Hydra configs, shrunk for CPU tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import videorec.utils.run  # noqa: F401  (registers the resolvers that the configs use)

# Keep W&B and caches inside the test sandbox and never prompt for a login.
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"  # the Hydra configs (shipped as the package videorec.conf)


def load_script(name: str):
    """Import ``scripts/<name>.py`` as the module ``name`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="videorec.conf", version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # what the entry points see under @hydra.main
    return cfg


@pytest.fixture
def compose():
    """``compose(config_name, overrides, output_dir)`` -> the composed config."""
    return compose_config


@pytest.fixture
def synthetic_root(tmp_path_factory) -> Path:
    """One generated copy of the embedded dataset shared by the tests of a session."""
    return tmp_path_factory.getbasetemp() / "synthetic-cache"


def synthetic_overrides(root: Path, train_per_class: int = 2, val_per_class: int = 1) -> list[str]:
    """Overrides for a small generated copy of the embedded dataset at `root`, one CPU process, no loader workers."""
    return [
        f"data.root={root}",
        f"data.train_per_class={train_per_class}",
        f"data.val_per_class={val_per_class}",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer=cpu",
    ]


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory) -> Path:
    """A small generated copy of the embedded dataset (2 train + 1 val video a class), shared by a session."""
    return tmp_path_factory.mktemp("tiny-synthetic") / "synthetic"


@pytest.fixture
def cpu_overrides(synthetic_root) -> list[str]:
    return [
        "trainer=cpu",
        "logger=none",
        "data.num_workers=0",
        f"data.root={synthetic_root}",
    ]
