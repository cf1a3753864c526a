"""Shared test setup: offline, a private cache, and a small embedded configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# No test may reach a hub; everything runs on CPU.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# A small but complete tofu-mini and tiny model: seconds instead of minutes to build.
SMALL = [
    "task.mini.num_authors=10", "task.mini.questions_per_author=4", "task.mini.num_holdout_authors=1",
    "task.mini.retain_perturbed_size=8", "task.mini.real_authors_size=8", "task.mini.world_facts_size=8",
    "model.architecture.vocab_size=400", "model.architecture.hidden_size=32",
    "model.architecture.intermediate_size=64", "model.architecture.num_layers=2",
    "model.base_training.epochs=4", "trainer.epochs=5", "task.eval.batch_size=16",
    "task.eval.generation_max_length=64",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("soul_cache")
    os.environ["SOUL_CACHE_DIR"] = str(path)
    return path


def run_in_process(*overrides: str, out_dir: Path, cache: Path) -> dict:
    """``soul.run.run_job`` in this process on the composed config (no new interpreter: the imports
    that cost a subprocess ~13 s are paid once); for tests of behaviour, not of the command line."""
    from hydra import compose, initialize_config_dir

    from soul.run import run_job

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir='{cache}'", f"paths.output_dir='{out_dir}'", *overrides])
    return run_job(cfg, Path(out_dir))


def soul_env(cache: Path, **extra: str) -> dict:
    """The environment a soul subprocess runs in: this one, with the test cache."""
    return {**os.environ, "SOUL_CACHE_DIR": str(cache), "HYDRA_FULL_ERROR": "0", **extra}


def run_soul(*overrides: str, cache: Path, check: bool = True, env: dict | None = None,
             cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m soul.run`` in a subprocess, as a user would call it (``env``: extra variables)."""
    env = soul_env(cache, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "soul.run", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"soul.run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
