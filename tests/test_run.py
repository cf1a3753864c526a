"""The real entry point, end to end on the embedded default (small sizes)."""

from __future__ import annotations

import json
import logging

import pytest
from hydra.errors import MissingConfigException

from conftest import SMALL, run_in_process, run_soul
from soul.eval import tofu_stats

REQUIRED_METRICS = {"forget_quality", "model_utility", "forget_rouge", "retain_rouge", "forget_truth_ratio"}


@pytest.fixture(scope="module")
def first_run(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_soul(*SMALL, f"hydra.run.dir={out}", cache=cache_dir)
    return out, proc


def test_run_directory_has_metrics_log_and_per_item_eval(first_run):
    out, proc = first_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_METRICS <= metrics.keys()
    assert 0.0 <= metrics["forget_quality"] <= 1.0 and 0.0 <= metrics["model_utility"] <= 1.0
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, metrics["steps"] + 1))
    assert {"lr", "loss", "forget_loss", "retain_loss", "grad_norm"} <= steps[0].keys()
    # The per-item log is TOFU's format: re-aggregating it gives the metrics that were written.
    log = tofu_stats.load_log(out / "tofu_eval.json")
    again = tofu_stats.summarize(log)
    assert again["model_utility"] == pytest.approx(metrics["model_utility"])
    assert again["forget_rouge"] == pytest.approx(metrics["forget_rouge"])
    assert "model_utility" in proc.stdout and str(out) in proc.stdout  # the summary table
    assert (out / "config.yaml").read_text().count("forget_split: forget10") == 1


def test_unlearning_changes_the_model(first_run):
    out, _ = first_run
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1]["forget_loss"] > steps[0]["forget_loss"]  # GradDiff ascends the forget loss


def test_base_models_are_cached_and_reused(tmp_path, caplog):
    cache = tmp_path / "fresh_cache"  # its own cache: other tests may have built the shared one
    with caplog.at_level(logging.INFO, logger="soul"):
        run_in_process(*SMALL, "task.eval.baseline=false", out_dir=tmp_path / "first", cache=cache)
    assert "building the tiny" in caplog.text
    weights = sorted(cache.glob("tiny_models/*/*/model.safetensors"))
    assert len(weights) == 2  # target (full) and retain (retain90)
    stamps = [w.stat().st_mtime_ns for w in weights]
    run_in_process(*SMALL, "task.eval.baseline=false", out_dir=tmp_path / "second", cache=cache)
    assert sorted(cache.glob("tiny_models/*/*/model.safetensors")) == weights  # nothing built again
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    # A setting that determines the base models gives a new cache entry, never a stale model.
    run_in_process(*SMALL, "model.base_training.seed=1", "task.eval.baseline=false", out_dir=tmp_path / "third",
                   cache=cache)
    rebuilt = sorted(cache.glob("tiny_models/*/*/model.safetensors"))
    assert len(rebuilt) == 4 and set(weights) < set(rebuilt)


def test_same_seed_same_result(first_run, cache_dir, tmp_path):
    out, _ = first_run
    again = tmp_path / "again"
    run_in_process(*SMALL, out_dir=again, cache=cache_dir)
    a = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (again / "train_log.jsonl").read_text().splitlines()]
    assert a == b


def test_unknown_choice_lists_the_options(cache_dir, tmp_path):
    # Hydra composes the config before soul runs; composed here, in this process, as the command line would.
    with pytest.raises(MissingConfigException) as err:
        run_in_process("optim=nope", out_dir=tmp_path, cache=cache_dir)
    assert "optim/nope" in str(err.value) and "adamw" in str(err.value)


def test_impossible_split_pair_fails_before_training(cache_dir, tmp_path):
    with pytest.raises(ValueError) as err:
        run_in_process(*SMALL, "task.forget_split=forget05", "task.retain_split=retain90", out_dir=tmp_path,
                       cache=cache_dir)
    assert "forget05" in str(err.value) and "retain90" in str(err.value) and "retain95" in str(err.value)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_every_optimizer_runs_through_the_runner_and_logs_diagnostics(cache_dir, tmp_path):
    logs = {}
    for optim in ("sophia", "sophia_h", "soul_ref", "signsgd", "iu"):
        job = tmp_path / optim
        run_in_process(*SMALL, f"optim={optim}", "trainer.max_steps=12", "task.eval.baseline=false", out_dir=job,
                       cache=cache_dir)
        name = json.loads((job / "metrics.json").read_text())["optim"]
        logs[name] = [json.loads(x) for x in (job / "train_log.jsonl").read_text().splitlines()]
    assert sorted(logs) == ["iu", "signsgd", "sophia", "sophia_h", "soul_ref"]
    for name in ("sophia", "sophia_h", "soul_ref"):
        last = logs[name][-1]
        assert {"clip_fraction", "win_rate", "mean_update_over_lr", "hessian_norm"} <= last.keys()
        assert 0.0 <= last["clip_fraction"] <= 1.0 and last["hessian_norm"] > 0
    # GNB / Hutchinson refresh every k = 10 steps: floor(12 / 10) = 1 pass; soul_ref needs none.
    assert logs["sophia"][-1]["curvature_passes"] == 1 and logs["sophia_h"][-1]["curvature_passes"] == 1
    assert "curvature_passes" not in logs["soul_ref"][-1]
    assert len(logs["iu"]) == 1 and logs["iu"][0]["curvature_batches"] == 16  # one step after the retain passes
    assert logs["iu"][0]["hessian_norm"] > 0 and logs["iu"][0]["mean_update_over_lr"] > 0
    assert 0.5 < logs["signsgd"][-1]["mean_update_over_lr"] <= 1.0


def test_first_and_second_order_runs_share_batches_and_schedule(cache_dir, tmp_path):
    logs = {}
    for optim in ("adamw", "sophia"):
        out = tmp_path / optim
        run_in_process(*SMALL, f"optim={optim}", "trainer.max_steps=6", out_dir=out, cache=cache_dir)
        logs[optim] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    for key in ("lr", "label_tokens"):
        assert [s[key] for s in logs["adamw"]] == [s[key] for s in logs["sophia"]]
    # identical first step (same batch, same weights) before the optimizers diverge
    assert logs["adamw"][0]["forget_loss"] == logs["sophia"][0]["forget_loss"]


def test_soul_variant_is_reported_beside_the_official_suite(cache_dir, tmp_path):
    out = tmp_path / "soulvariant"
    run_in_process(*SMALL, "task.eval.variant=soul", "trainer.max_steps=2", out_dir=out, cache=cache_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric_variant"] == "tofu-official+soul"
    assert {"model_utility", "forget_quality", "soul_forget_quality", "soul_mia_min_k50_auc"} <= metrics.keys()
    soul = json.loads((out / "tofu_eval_soul.json").read_text())
    assert soul["meta"]["variant"] == "soul" and soul["summary"]["soul_forget_rouge"] == metrics["soul_forget_rouge"]
    with pytest.raises(ValueError, match="task.eval.variant"):
        run_in_process(*SMALL, "task.eval.variant=both", out_dir=tmp_path / "bad", cache=cache_dir)
