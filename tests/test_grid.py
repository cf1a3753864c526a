"""Grids: W&B offline logging of every job, skip-on-rerun, failed jobs on record, and soul.report."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import SMALL, run_in_process, run_soul
from wandb_offline import summarize_run

from soul import report
from soul.loggers import REDACTED, redact_secrets, resolve_wandb_mode, wandb_logged_in

SECRET = "soul-test-secret-7f3a9c"  # a fake API key that must never reach a file
GRID = ("-m", "optim=adamw,sophia", "seed=0,1", *SMALL, "trainer.max_steps=6")


def jobs_of(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "status.json").is_file())


@pytest.fixture(scope="module")
def grid(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    proc = run_soul(*GRID, f"paths.output_dir={out}", "logger=wandb", "logger.mode=offline",
                    cache=cache_dir, env={"WANDB_API_KEY": SECRET})
    return out, out / "sweeps" / "default", proc


def test_grid_runs_every_job_with_its_own_offline_wandb_run(grid):
    out, sweep, _ = grid
    jobs = jobs_of(sweep)
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        metrics = json.loads((job / "metrics.json").read_text())
        optim, seed = metrics["optim"], metrics["seed"]
        seen.add((optim, seed))
        assert job.name.startswith(f"optim={optim},seed={seed}")  # identifying overrides lead the name
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, f"one offline run per job in {job}"
        wb = summarize_run(files[0])
        assert wb["run"]["name"] == f"tofu-graddiff-{optim}-seed{seed}"
        assert wb["run"]["group"] == f"tofu-tiny-graddiff-{optim}"
        assert {"tofu", "tiny", "objective:graddiff", f"optim:{optim}", f"seed:{seed}"} <= set(wb["run"]["tags"])
        # The fully resolved config, as the run directory's config.yaml holds it.
        assert wb["config"]["optim"]["name"] == optim and wb["config"]["seed"] == seed
        assert wb["config"]["optim"]["lr"] == pytest.approx(3e-4)  # ${model.unlearn_lr}, resolved
        # Every step: forget and retain losses, learning rate, and the optimizer's diagnostics.
        steps = [row for row in wb["history"] if "train/step" in row]
        train_log = [json.loads(x) for x in (job / "train_log.jsonl").read_text().splitlines()]
        assert [row["train/step"] for row in steps] == [r["step"] for r in train_log] == list(range(1, 7))
        for row, rec in zip(steps, train_log):
            assert row["train/forget_loss"] == pytest.approx(rec["forget_loss"])
            assert row["train/retain_loss"] == pytest.approx(rec["retain_loss"])
            assert row["train/lr"] == pytest.approx(rec["lr"])
        if optim == "sophia":
            assert {"train/clip_fraction", "train/win_rate", "train/hessian_norm"} <= steps[-1].keys()
        # Final metrics in the summary, per-item evaluation files as an artifact.
        assert wb["summary"]["forget_quality"] == pytest.approx(metrics["forget_quality"])
        assert wb["summary"]["model_utility"] == pytest.approx(metrics["model_utility"])
        assert wb["summary"]["status"] == "completed"
        assert any(a["type"] == "evaluation" and "tofu_eval.json" in a["files"] for a in wb["artifacts"])
    assert seen == {("adamw", 0), ("adamw", 1), ("sophia", 0), ("sophia", 1)}


def test_no_secret_reaches_any_file(grid):
    out, _, _ = grid
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_rerun_skips_finished_jobs(grid, cache_dir):
    out, sweep, _ = grid
    before = {j: (j / "metrics.json").stat().st_mtime_ns for j in jobs_of(sweep)}
    proc = run_soul(*GRID, f"paths.output_dir={out}", "logger=wandb", "logger.mode=offline", cache=cache_dir)
    assert proc.stdout.count("soul: skipped") == 4
    assert {j: (j / "metrics.json").stat().st_mtime_ns for j in jobs_of(sweep)} == before
    assert all(len(list(j.glob("wandb/offline-run-*"))) == 1 for j in before)  # no new W&B runs either


def test_rerun_refuses_a_finished_job_of_another_config(cache_dir, tmp_path):
    # A finished job (run in this process, to save an interpreter start; the grid test above runs
    # jobs from the command line), whose saved config then differs from the one asked for.
    job = tmp_path / "job"
    same_job = (*SMALL, "trainer.max_steps=2")
    run_in_process(*same_job, out_dir=job, cache=cache_dir)
    saved = job / "config.yaml"
    saved.write_text(saved.read_text().replace("max_grad_norm: 1.0", "max_grad_norm: 0.5"))
    metrics = (job / "metrics.json").read_text()
    with pytest.raises(ValueError) as err:
        run_in_process(*same_job, out_dir=job, cache=cache_dir)
    assert "trainer.max_grad_norm: 0.5 -> 1.0" in str(err.value) and "overwrite=true" in str(err.value)
    assert (job / "metrics.json").read_text() == metrics  # nothing lost
    run_in_process(*same_job, "overwrite=true", out_dir=job, cache=cache_dir)
    assert "max_grad_norm: 1.0" in saved.read_text() and (job / "metrics.json").read_text() != metrics


def test_a_failing_job_is_recorded_and_the_others_complete(cache_dir, tmp_path):
    # A negative learning rate fails inside the first job (the optimizer rejects it); the second runs on.
    # No output path is given: jobs go to ./outputs/sweeps/default/<overrides>, named without time, so
    # that the same command run again finds them.
    proc = run_soul("-m", "optim.lr=-1,0.0001", *SMALL, "trainer.max_steps=2", cache=cache_dir, cwd=tmp_path,
                    check=False)
    assert proc.returncode != 0
    sweep = tmp_path / "outputs" / "sweeps" / "default"
    jobs = {j.name.split(",")[0]: j for j in jobs_of(sweep)}  # the swept override leads each name
    assert sorted(jobs) == ["optim.lr=-1", "optim.lr=0.0001"]
    failed = json.loads((jobs["optim.lr=-1"] / "status.json").read_text())
    completed = json.loads((jobs["optim.lr=0.0001"] / "status.json").read_text())
    assert failed["status"] == "failed" and "Invalid learning rate" in failed["error"]
    assert "Traceback" in failed["traceback"] and not (jobs["optim.lr=-1"] / "metrics.json").exists()
    assert completed["status"] == "completed" and (jobs["optim.lr=0.0001"] / "metrics.json").is_file()
    text = report.build_report([sweep], tmp_path / "report")
    assert "## Failed jobs" in text and "Invalid learning rate" in text


def test_report_tables_and_plots(grid, tmp_path):
    _, sweep, _ = grid
    out = tmp_path / "report"
    text = report.build_report([sweep], out)
    for name in ("report.md", "table.csv", "table.tex", "fq_vs_mu.png", "training_curves.png", "comparison.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "fq_vs_mu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [(r["objective"], r["optimizer"], r["seeds"]) for r in rows] == [
        ("graddiff", "adamw (FO)", "2"), ("graddiff", "sophia (SO)", "2")]
    # Aggregates are the mean of the runs' own metrics.json (geometric for forget quality).
    for row, optim in zip(rows, ("adamw", "sophia")):
        runs = [json.loads((j / "metrics.json").read_text()) for j in jobs_of(sweep) if j.name.startswith(f"optim={optim}")]
        assert float(row["model_utility_mean"]) == pytest.approx(sum(r["model_utility"] for r in runs) / 2)
        geo = 10 ** (sum(math.log10(r["forget_quality"]) for r in runs) / 2)
        assert float(row["forget_quality_mean"]) == pytest.approx(geo, rel=1e-6)
    assert "Metric variant: tofu-official" in text and "`trainer.max_steps=6`" in text
    assert "| graddiff | sophia | 2 |" in text  # the paired second- vs first-order comparison
    assert "\\toprule" in (out / "table.tex").read_text()


def test_report_rejects_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        report.build_report([tmp_path / "nowhere"], tmp_path / "out")


def test_mean_std_is_geometric_for_forget_quality():
    mean, std, n = report.mean_std([1e-2, 1e-4], log_scale=True)
    assert mean == pytest.approx(1e-3) and std == pytest.approx(math.sqrt(2)) and n == 2
    mean, std, n = report.mean_std([0.2, 0.4, None])
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.02)) and n == 2


def test_arms_split_only_on_settings_that_vary_within_a_choice(tmp_path):
    def run(optim, seed, lr, rho=None):
        cfg = {"seed": seed, "objective": {"name": "graddiff"}, "optim": {"name": optim, "lr": lr},
               "task": {"name": "tofu"}, "model": {"name": "tiny"}}
        if rho is not None:
            cfg["optim"]["rho"] = rho
        return report.Run(tmp_path, cfg, {}, None, None, report.flatten(cfg))

    runs = [run("adamw", s, 1e-4) for s in (0, 1)] + [run("sophia", s, 1e-4, rho=0.04) for s in (0, 1)]
    arms, distinguishing = report.group_arms(runs)
    assert distinguishing == [] and [k[:2] for k in arms] == [("graddiff", "adamw"), ("graddiff", "sophia")]
    runs += [run("adamw", s, 1e-3) for s in (0, 1)]  # an lr sweep within adamw splits its arms
    arms, distinguishing = report.group_arms(runs)
    assert distinguishing == ["optim.lr"] and len(arms) == 3


def test_wandb_mode_follows_wandb_conventions(tmp_path):
    netrc_file = tmp_path / "netrc"
    assert resolve_wandb_mode("auto", {"NETRC": str(netrc_file)}) == "offline"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": "x"}) == "online"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_logged_in({"NETRC": str(netrc_file)})
    assert resolve_wandb_mode("auto", {"NETRC": str(netrc_file)}) == "online"
    assert resolve_wandb_mode("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "x"}) == "offline"
    assert resolve_wandb_mode("auto", {"WANDB_DISABLED": "true"}) == "disabled"
    assert resolve_wandb_mode("disabled", {"WANDB_API_KEY": "x"}) == "disabled"
    with pytest.raises(ValueError, match="logger.mode must be one of"):
        resolve_wandb_mode("sometimes", {})


def test_secrets_are_redacted_from_uploaded_configs():
    cfg = {"logger": {"api_key": "k", "project": "soul"}, "hub": {"HF_TOKEN": "t"}, "optim": {"lr": 1e-4}}
    clean = redact_secrets(cfg)
    assert clean == {"logger": {"api_key": REDACTED, "project": "soul"}, "hub": {"HF_TOKEN": REDACTED},
                     "optim": {"lr": 1e-4}}


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    from hydra import compose, initialize_config_dir

    import soul.run  # noqa: F401  (registers the config's resolvers)
    from conftest import REPO
    from soul.loggers import WandbLogger

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=wandb", "logger.mode=offline"])
    first = WandbLogger(cfg, tmp_path)
    first.finish(None, status="failed")  # killed mid-way
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        resumed_cfg = compose("config", overrides=["logger=wandb", "logger.mode=offline", "resume=true"])
    again = WandbLogger(resumed_cfg, tmp_path)
    again.finish(None)
    assert again.run.id == first.run.id == (tmp_path / "wandb_run_id.txt").read_text()
