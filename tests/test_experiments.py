"""Experiment bundles: the official SOUL TOFU hyperparameters, and matched variants."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import soul.run  # noqa: F401  (registers the config resolvers)
from conftest import REPO

# SOUL configs/TOFU/*.json (soul-paper.md section 4.1): (objective, optimizer, lr, gamma)
OFFICIAL = {
    "soul_tofu_graddiff_fo": ("graddiff", "adamw", 5e-6, 0.3),
    "soul_tofu_graddiff_so": ("graddiff", "soul_ref", 5e-6, 2.0),
    "soul_tofu_po_fo": ("po", "adamw", 2e-5, 1.0),
    "soul_tofu_po_so": ("po", "soul_ref", 1e-5, 5.0),
}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_soul_presets(name):
    objective, optim, lr, gamma = OFFICIAL[name]
    cfg = composed(f"experiment={name}")
    assert (cfg.objective.name, cfg.optim.name, cfg.optim.lr, cfg.objective.gamma) == (objective, optim, lr, gamma)
    assert cfg.model.hub_id == "locuslab/tofu_ft_llama2-7b" and cfg.task.source == "hub"
    assert (cfg.task.forget_split, cfg.task.retain_split) == ("forget10", "retain90")
    assert (cfg.trainer.batch_size, cfg.trainer.grad_accum, cfg.trainer.epochs) == (1, 4, 5)
    assert cfg.optim.weight_decay == 0.1 and cfg.mixed_precision == "bf16" and cfg.trainer.warmup_ratio == 0.1
    if optim == "soul_ref":
        assert cfg.optim.bs == 5120 and cfg.optim.double_momentum and cfg.optim.hessian_in_step
        assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.rho == 0.04


def test_fo_and_so_presets_differ_only_in_optimizer_and_tuning():
    fo = OmegaConf.to_container(composed("experiment=soul_tofu_graddiff_fo"), resolve=True)
    so = OmegaConf.to_container(composed("experiment=soul_tofu_graddiff_so"), resolve=True)
    assert {k for k in fo if fo[k] != so[k]} == {"optim", "objective"}
    assert fo["trainer"] == so["trainer"] and fo["task"] == so["task"] and fo["seed"] == so["seed"]


@pytest.mark.parametrize("optim", ["adamw", "soul_ref", "sophia"])
def test_matched_preset_leaves_only_the_optimizer_free(optim):
    cfg = composed("experiment=soul_tofu_graddiff_matched", f"optim={optim}")
    assert cfg.optim.name == optim and cfg.optim.lr == 5e-6 and cfg.objective.gamma == 0.3


def test_every_experiment_composes():
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        cfg = composed(f"experiment={path.stem}")
        assert cfg.model.name == "llama2-7b-tofu"


def test_npo_twins_differ_only_in_optimizer():
    fo = OmegaConf.to_container(composed("experiment=soul_tofu_npo_fo"), resolve=True)
    so = OmegaConf.to_container(composed("experiment=soul_tofu_npo_so"), resolve=True)
    assert {k for k in fo if fo[k] != so[k]} == {"optim"}
    assert fo["optim"]["lr"] == so["optim"]["lr"] == 5e-6 and fo["objective"]["length_normalized"]


def test_official_presets_scale_their_learning_rate_on_the_tiny_model():
    # grid=tofu_fo_vs_so_official runs the presets on the embedded default: lr x model.lr_scale (60).
    for name, (_, optim, lr, gamma) in OFFICIAL.items():
        cfg = composed(f"experiment={name}", "grid=tofu_fo_vs_so_official")
        assert cfg.model.name == "tiny" and cfg.task.source == "embedded" and cfg.mixed_precision == "no"
        assert cfg.optim.name == optim and cfg.objective.gamma == gamma
        assert cfg.optim.lr == pytest.approx(lr * 60)


GRIDS = sorted(p.stem for p in (REPO / "conf" / "grid").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS)
def test_every_grid_names_real_choices(grid):
    """Every swept value of every ready grid composes into a config (what `-m grid=...` will run)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=/tmp/unused", f"grid={grid}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.sweep_name == grid and "seed" in params
    for key, values in params.items():
        for value in str(values).split(","):
            job = composed(f"grid={grid}", f"{key}={value}")
            if key == "experiment":
                continue  # a bundle: composing it is the check
            chosen = OmegaConf.select(job, key)
            assert str(chosen.name if hasattr(chosen, "name") else chosen) == value
