"""Every objective with every optimizer, through the real runner, on the embedded default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, SMALL
from soul.run import run

OPTIMS = sorted(p.stem for p in (REPO / "conf" / "optim").glob("*.yaml"))
OBJECTIVES = sorted(p.stem for p in (REPO / "conf" / "objective").glob("*.yaml"))


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_runs_with_optimizer(objective, optim, cache_dir, tmp_path: Path):
    overrides = [*SMALL, f"objective={objective}", f"optim={optim}", "trainer.max_steps=3",
                 "task.eval.baseline=false", f"paths.output_dir={tmp_path}"]
    if optim in ("sophia", "sophia_h"):
        overrides.append("optim.interval=2")  # exercise the curvature pass with every objective
    if objective == "rmu":
        overrides.append("objective.layer=1")  # the small test model has two layers
    if optim == "iu":
        overrides.append("optim.retain_batches=2")
    cfg = compose_config(*overrides)
    metrics = run(cfg, tmp_path / "run")
    assert metrics["objective"] == objective and metrics["optim"] == optim
    assert 0.0 <= metrics["forget_quality"] <= 1.0 and 0.0 <= metrics["model_utility"] <= 1.0
    steps = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
    if optim in ("sophia", "sophia_h"):
        assert steps[-1]["curvature_passes"] == 1
