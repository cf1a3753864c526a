"""Scale and reliability: config validation, the non-finite guard, checkpoints and resume after a
SIGKILL, and two processes under ``accelerate launch``."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, SMALL, run_in_process, run_soul, soul_env
from soul.checkpoint import Checkpointer
from soul.config_check import config_problems, validate
from soul.data.qa import PromptTemplate
from soul.models import build_tiny_llama
from soul.objectives import build_objective, nll
from soul.tokenizer import train_bpe_tokenizer
from soul.unlearn import check_deepspeed, check_fsdp, configure_deepspeed, unlearn


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


# ------------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("override, message", [
    ("device=gpu", "device='gpu': allowed values are auto, cpu"),
    ("mixed_precision=fp8", "mixed_precision='fp8': allowed values are auto, no, bf16, fp16"),
    ("model.dtype=float64", "model.dtype='float64': allowed values are float32, bfloat16, float16"),
    ("model.attn_implementation=flash", "model.attn_implementation='flash': allowed values are sdpa, eager"),
    ("task.forget_split=forget20", "task.forget_split='forget20': allowed values are forget01, forget05, forget10"),
    ("optim.name=lion", "optim.name='lion': allowed values are adamw, iu, sgd, signsgd, sophia"),
    ("trainer.batch_size=0", "trainer.batch_size=0: must be a positive integer"),
    ("trainer.grad_accum=1.5", "trainer.grad_accum=1.5: must be a positive integer"),
    ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio=1.5: must be a number in [0, 1)"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm=-1: must be a positive number or null"),
    ("checkpoint.every=-5", "checkpoint.every=-5: must be a non-negative integer"),
    ("resume=maybe", "resume='maybe': must be true or false"),
    ("model.source=local", "model.path=None: model.source=local needs the model's directory"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    problems = config_problems(composed(override))
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_task_specific_choices_and_every_problem_at_once():
    problems = config_problems(composed("task=wmdp", "task.subset=chem", "task.retain=c4", "seed=-1"))
    assert problems == ["task.subset='chem': allowed values are bio, cyber",
                        "task.retain='c4': allowed values are wikitext, corpus",
                        "seed=-1: must be a non-negative integer"]
    with pytest.raises(ValueError, match=r"invalid config:\n  task.subset='chem'.*\n  task.retain='c4'"):
        validate(composed("task=wmdp", "task.subset=chem", "task.retain=c4"))


def shipped_configs():
    conf = REPO / "conf"
    combos = [(f"task={t}", f"model={m}") for t in ("tofu", "wmdp", "copyright")
              for m in (p.stem for p in (conf / "model").glob("*.yaml"))]
    combos += [(f"experiment={p.stem}",) for p in (conf / "experiment").glob("*.yaml") if p.stem != "soul_tofu_common"]
    combos += [(f"grid={p.stem}",) for p in (conf / "grid").glob("*.yaml")]
    combos += [(f"optim={p.stem}",) for p in (conf / "optim").glob("*.yaml")]
    combos += [(f"objective={p.stem}",) for p in (conf / "objective").glob("*.yaml")]
    return combos


@pytest.mark.parametrize("overrides", shipped_configs(), ids=lambda o: ",".join(o))
def test_every_shipped_config_is_valid(overrides):
    assert config_problems(composed(*overrides)) == []


def test_the_runner_rejects_a_bad_config_before_building_anything(cache_dir, tmp_path):
    with pytest.raises(ValueError) as err:
        run_in_process(*SMALL, "trainer.batch_size=0", "device=tpu", out_dir=tmp_path, cache=cache_dir)
    assert "trainer.batch_size=0: must be a positive integer" in str(err.value)
    assert "device='tpu': allowed values are auto, cpu" in str(err.value)
    assert not any(tmp_path.iterdir())  # not even a status file


# ------------------------------------------------------------------------------- non-finite guard

@pytest.fixture(scope="module")
def tiny_setup():
    texts = [f"Question: who is author {i}?\nAnswer: author {i} writes about topic {i * 7 % 5}" for i in range(12)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    rows = [{"question": f"who is author {i}?", "answer": f"author {i} writes about topic {i * 7 % 5}"}
            for i in range(12)]
    return tokenizer, rows


def guarded_run(tiny_setup, tmp_path, objective, checkpoint_every=2, steps=6):
    tokenizer, rows = tiny_setup
    torch.manual_seed(0)
    arch = OmegaConf.create({"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
                             "max_position_embeddings": 128})
    model = build_tiny_llama(arch, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accelerator = Accelerator(cpu=True)
    trainer = OmegaConf.create({"batch_size": 2, "grad_accum": 1, "max_steps": steps, "epochs": 1, "warmup_ratio": 0.0,
                                "max_grad_norm": 1.0, "max_length": 64})
    checkpointer = Checkpointer(accelerator, tmp_path, checkpoint_every)
    with pytest.raises(FloatingPointError) as err:
        unlearn(model, tokenizer, PromptTemplate(), rows[:6], rows[6:], objective, optimizer, trainer, accelerator,
                0, tmp_path / "train_log.jsonl", checkpointer=checkpointer)
    return str(err.value)


class ScriptedObjective:
    """GradDiff's forget term, made non-finite from step ``bad_step`` on (in the loss or only in the gradient)."""

    needs_refusals = False

    def __init__(self, bad_step: int, where: str):
        self.calls, self.bad_step, self.where = 0, bad_step, where

    def __call__(self, model, batch):
        self.calls += 1
        loss = -nll(model, batch["forget"])
        if self.calls >= self.bad_step:
            if self.where == "loss":
                loss = loss * float("nan")
            else:  # finite value, non-finite gradient: d/dw sqrt(w - w) at 0
                w = next(model.parameters())
                loss = loss + 0.0 * torch.sqrt(w - w).sum()
        return loss, {"forget_loss": -loss.item()}


@pytest.mark.parametrize("where, what", [("loss", "non-finite loss nan at step 5"),
                                         ("gradient", "non-finite gradient norm nan at step 5")])
def test_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_setup, tmp_path, where, what):
    message = guarded_run(tiny_setup, tmp_path, ScriptedObjective(bad_step=5, where=where))
    assert what in message and "before this step's update" in message
    assert f"the last good checkpoint (step 4) is kept in {tmp_path / 'checkpoint'}" in message
    progress = json.loads((tmp_path / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 4 and (tmp_path / "checkpoint" / "model.safetensors").is_file()
    logged = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # nothing of the bad step was applied or logged


def test_a_diverging_run_is_marked_failed_with_its_checkpoint(cache_dir, tmp_path):
    with pytest.raises(FloatingPointError):
        run_in_process(*SMALL, "objective=ga", "optim=sgd", "optim.lr=1e8", "trainer.max_grad_norm=null",
                       "trainer.max_steps=30", "checkpoint.every=1", "task.eval.baseline=false", out_dir=tmp_path,
                       cache=cache_dir)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "FloatingPointError: non-finite" in status["error"]
    assert "last good checkpoint" in status["error"] and (tmp_path / "checkpoint" / "progress.json").is_file()
    assert not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------------------- SIGKILL and resume

RESUMABLE = [*SMALL, "optim=sophia", "trainer.max_steps=60", "checkpoint.every=10", "task.eval.baseline=false"]
TIMINGS = ("train_seconds", "steps_per_second", "total_seconds", "resumed_from_step")


def test_a_killed_run_resumes_to_the_same_result(cache_dir, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_in_process(*RESUMABLE, out_dir=whole, cache=cache_dir)  # in this process: no interpreter start to pay
    assert not (whole / "checkpoint").exists()  # a finished run drops its checkpoints

    proc = subprocess.Popen([sys.executable, "-m", "soul.run", *RESUMABLE, f"hydra.run.dir={killed}"], cwd=REPO,
                            env=soul_env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    progress = killed / "checkpoint" / "progress.json"
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["step"] >= 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"

    run_in_process(*RESUMABLE, "resume=true", out_dir=killed, cache=cache_dir)
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["resumed_from_step"] >= 20 and a["resumed_from_step"] == 0
    for key, value in a.items():
        if key in TIMINGS:
            continue
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert b[key] == value, key
    # The step log is whole and the same: every step once, the same losses and curvature passes.
    log_a = [json.loads(line) for line in (whole / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 61))
    assert [r["loss"] for r in log_b] == pytest.approx([r["loss"] for r in log_a], rel=1e-5, abs=1e-7)
    assert [r["curvature_passes"] for r in log_b] == [r["curvature_passes"] for r in log_a]


# ------------------------------------------------------------------------------- two processes

TWO_PROCESS_RUN = [*SMALL, "trainer.grad_accum=1", "trainer.max_steps=12", "checkpoint.every=10", "checkpoint.keep=true"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher_args: list[str], program: list[str], outputs: Path, cache: Path, optim: str = "sophia", **env: str):
    # A port of its own per launch, not torchrun's fixed default, which an earlier launch may still hold.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_processes", "2",
           "--main_process_port", str(free_port()),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *program, *TWO_PROCESS_RUN,
           f"optim={optim}", f"paths.output_dir={outputs}"]
    proc = subprocess.run(cmd, cwd=REPO, env=soul_env(cache, **env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [p for p in (outputs / "runs").iterdir()]
    assert len(runs) == 1, runs  # process 1 wrote into process 0's directory
    return cmd, proc, runs[0]


def read_run(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return (json.loads((run_dir / "metrics.json").read_text()), json.loads((run_dir / "ranks.json").read_text()), log)


@pytest.fixture(scope="module")
def ddp_runs(cache_dir, tmp_path_factory):
    """Two processes, DDP over gloo on the CPU, one launch per optimizer asked for (each once per
    module). accelerate's --cpu launcher starts several processes only through MPI; --multi_gpu
    with no GPU visible starts them through torchrun."""
    runs = {}

    def run(optim: str):
        if optim not in runs:
            runs[optim] = launch(["--multi_gpu"], ["-m", "soul.run"], tmp_path_factory.mktemp(f"ddp-{optim}"),
                                 cache_dir, optim)
        return runs[optim]
    return run


def test_two_processes_under_accelerate_launch(ddp_runs):
    """Both ranks train on different pairs, weights stay in step, one process writes the results,
    into one run directory. (Two processes resume together in the sharded-engine test below.)"""
    cmd, proc, run_dir = ddp_runs("sophia")
    metrics, ranks, log = read_run(run_dir)
    assert metrics["processes"] == 2 and metrics["effective_batch"] == 2 * 1 * 2
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["steps"] == 12 for r in ranks)
    assert ranks[0]["forget_batches"] != ranks[1]["forget_batches"]  # a generator per rank
    # DDP keeps the weights in step, Sophia's curvature pass (step 10) and its token count B included.
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert len(log) == 12 and log[-1]["curvature_passes"] == 1  # logged once, not per process
    assert proc.stdout.count("run directory:") == 1  # one summary
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


SHARDING_ENGINES = {
    # engine: (accelerate config, entry script, extra environment, what its checkpoint holds)
    "zero2": ("deepspeed_zero2.yaml", "deepspeed_entry.py", {"DS_ACCELERATOR": "cpu"}, "pytorch_model"),
    "zero3": ("deepspeed_zero3.yaml", "deepspeed_entry.py", {"DS_ACCELERATOR": "cpu"}, "pytorch_model"),
    "fsdp2": ("fsdp.yaml", "fsdp_entry.py", {}, "pytorch_model_fsdp_0"),
}


# resume=True also resumes the run from the engine's step-10 checkpoint. Off for the suite's time
# budget (each resume is one more two-process launch); run by hand for ZeRO-3 and FSDP2.
@pytest.mark.parametrize("engine, optim, resume", [("zero2", "sophia_h", False), ("zero3", "sophia", False),
                                                   ("fsdp2", "sophia", False)])
def test_sophia_under_sharding_engines_matches_ddp(engine, optim, resume, ddp_runs, cache_dir, tmp_path):
    """accelerate's DeepSpeed (conf/accelerate/deepspeed_zero{2,3}.yaml) and FSDP2 (fsdp.yaml)
    launches on two CPU processes. DeepSpeed steps Sophia on its flat fp32 partitions and runs a
    curvature pass as an engine step of its own (Sophia-G's sampled-label gradient; Sophia-H's
    estimate from a double backward outside the engine, unclipped); FSDP2 shards every decoder
    layer and Sophia's state with it; under ZeRO-3 and FSDP the weights are sharded too, and
    gathered for evaluation. Each run ends where the DDP run with the same settings does, holding
    about half the optimizer state per process, and a resumed run where the uninterrupted one does."""
    config, entry, env, checkpoint_part = SHARDING_ENGINES[engine]
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    # The cached data and base models, but no cached evaluations: the first run's baseline and retain
    # model evaluations happen under the engine too (under ZeRO-3 every process evaluated the retain
    # model, built partitioned: seen on a cold cache).
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry_path in cache_dir.iterdir():
        if entry_path.name != "evals":
            (cache / entry_path.name).symlink_to(entry_path)
    cmd, proc, run_dir = launch(["--config_file", str(REPO / "conf" / "accelerate" / config)],
                                [str(Path(__file__).parent / entry)], tmp_path / "outputs", cache, optim, **env)
    assert (run_dir / "checkpoint" / checkpoint_part).is_dir()  # the engine's own checkpoint: the engine ran
    metrics, ranks, log = read_run(run_dir)
    ddp_metrics, ddp_ranks, ddp_log = read_run(ddp_runs(optim)[2])
    assert metrics["processes"] == 2 and [r["forget_batches"] for r in ranks] == [r["forget_batches"] for r in ddp_ranks]
    # DDP's processes hold the same weights (Sophia-H's estimate is averaged over them: the test found
    # each process folding in its own), and so do the sharded runs' (summed over shards).
    assert ddp_ranks[0]["param_checksum"] == pytest.approx(ddp_ranks[1]["param_checksum"], rel=1e-9)
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert ranks[0]["param_checksum"] == pytest.approx(ddp_ranks[0]["param_checksum"], rel=1e-6)
    # The optimizer state (Sophia's momentum and curvature EMA) is split between the processes.
    whole_state = ddp_ranks[0]["optimizer_state_numel"]
    assert whole_state > 0 and all(r["optimizer_state_numel"] < 0.6 * whole_state for r in ranks)
    assert sum(r["optimizer_state_numel"] for r in ranks) == pytest.approx(whole_state, rel=0.01)  # (padding)
    assert [x["loss"] for x in log] == pytest.approx([x["loss"] for x in ddp_log], rel=1e-5, abs=1e-6)
    assert log[-1]["curvature_passes"] == 1
    # Diagnostics are totals over both processes' shards, as DDP's are over whole tensors. (Clipped
    # like a gradient, Sophia-H's estimate would leave a curvature norm 20 times smaller: seen.)
    for key in ("clip_fraction", "hessian_norm", "mean_update_over_lr"):
        assert log[-1][key] == pytest.approx(ddp_log[-1][key], rel=1e-4), key
    assert log[-1]["hessian_norm"] > 0
    for key in ("forget_quality", "model_utility"):
        assert metrics[key] == pytest.approx(ddp_metrics[key], rel=1e-4)
    if not resume:
        return

    # Resumed from the engine's own step-10 checkpoint (Sophia's curvature EMA on the shards
    # included), both processes end where the uninterrupted run did.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed_dir)
    (resumed_dir / "status.json").unlink()
    proc = subprocess.run([*cmd, "resume=true", f"hydra.run.dir={resumed_dir}"], cwd=REPO,
                          env=soul_env(cache, **env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed, resumed_ranks, resumed_log = read_run(resumed_dir)
    assert resumed["resumed_from_step"] == 10 and [r["steps"] for r in resumed_ranks] == [2, 2]
    assert [r["param_checksum"] for r in resumed_ranks] == pytest.approx([r["param_checksum"] for r in ranks], rel=1e-9)
    assert [x["loss"] for x in resumed_log] == pytest.approx([x["loss"] for x in log], rel=1e-6)
    assert resumed_log[-1]["clip_fraction"] == pytest.approx(log[-1]["clip_fraction"], rel=1e-9)


def fake_deepspeed_accelerator(config: dict, processes: int = 2):
    plugin = SimpleNamespace(deepspeed_config=config)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=processes)


def test_deepspeed_config_is_filled_in_and_checked():
    trainer = OmegaConf.create({"batch_size": 3, "grad_accum": 1, "max_grad_norm": 1.0})
    sophia = OmegaConf.create({"name": "sophia", "estimator": "gnb"})
    config = {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 1, "gradient_clipping": "auto"}
    check_deepspeed(config, trainer, sophia)
    configure_deepspeed(fake_deepspeed_accelerator(config), trainer)
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["train_batch_size"] == 6
    assert config["gradient_clipping"] == 1.0 and config["zero_allow_untested_optimizer"] is True
    refused = [
        ({}, {"grad_accum": 2}, sophia, "trainer.grad_accum must be 1 (got 2)"),
        ({"gradient_accumulation_steps": 4}, {}, sophia, "gradient_accumulation_steps=4 must be 1"),
        ({"gradient_clipping": 0.5}, {}, sophia, "gradient_clipping=0.5 differs from trainer.max_grad_norm=1.0"),
        ({"zero_optimization": {"stage": 3}}, {}, {"name": "sophia_h", "estimator": "hutchinson"},
         "estimator=hutchinson needs a double backward through the weights, which ZeRO-3 partitions"),
        ({}, {}, {"name": "iu", "estimator": "fisher"}, "optim=iu does not run under DeepSpeed"),
    ]
    for config_change, trainer_change, optim, message in refused:
        config = {"zero_optimization": {"stage": 2}, **config_change}
        with pytest.raises(ValueError, match=re.escape(message)):
            check_deepspeed(config, OmegaConf.merge(trainer, trainer_change), OmegaConf.create(optim))
    for name in ("adamw", "soul_ref"):  # first-order and in-step curvature pass
        check_deepspeed({"zero_optimization": {"stage": 2}}, trainer, OmegaConf.create({"name": name}))
    check_deepspeed({"zero_optimization": {"stage": 2}}, trainer, OmegaConf.create({"name": "sophia_h",
                                                                                    "estimator": "hutchinson"}))


def test_fsdp_refuses_sophia_h_at_start_up():
    """FSDP runs the forward on gathered copies of its shards, which a double backward does not reach
    (seen: "The differentiated Tensor ... appears to not have been used in the graph")."""
    with pytest.raises(ValueError, match=r"hutchinson needs a double backward .* FSDP.* use optim=sophia"):
        check_fsdp(OmegaConf.create({"name": "sophia_h", "estimator": "hutchinson"}))
    for optim in ({"name": "sophia", "estimator": "gnb"}, {"name": "soul_ref", "estimator": "in_step"},
                  {"name": "adamw"}):
        check_fsdp(OmegaConf.create(optim))


def test_a_deepspeed_launch_without_gpus_is_not_turned_into_a_cpu_run(monkeypatch):
    """accelerate's cpu flag would quietly replace DeepSpeed with plain DDP; without GPUs the processes
    meet over gloo instead."""
    from soul.run import process_group_settings, use_cpu

    cfg = OmegaConf.create({"device": "auto"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert use_cpu(cfg) and process_group_settings() == {}
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert not use_cpu(cfg) and process_group_settings() == {"backend": "gloo"}


# ------------------------------------------------------------------------------- LoRA, precision

def test_unlearning_through_lora_adapters(cache_dir, tmp_path):
    run_in_process(*SMALL, "model.lora=true", "model.lora_settings.r=4", "trainer.max_steps=4", "save_model=true",
                   "task.eval.baseline=false", out_dir=tmp_path, cache=cache_dir)
    from safetensors.torch import load_file

    config = OmegaConf.load(tmp_path / "config.yaml")
    base_dir = Path(json.loads((tmp_path / "tofu_eval.json").read_text())["meta"]["model"])  # the model unlearned
    unlearned = load_file(tmp_path / "model" / "model.safetensors")
    assert not any("lora" in key for key in unlearned)  # merged: a plain transformers model
    assert config.model.lora is True and json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4
    base = load_file(base_dir / "model.safetensors")
    assert unlearned.keys() == base.keys()
    # Only the adapters trained: the embeddings (not a LoRA target) are the base model's.
    assert torch.equal(unlearned["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(unlearned["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


def test_lora_with_rmu_is_refused():
    assert config_problems(composed("model.lora=true", "objective=rmu")) == [
        "model.lora=True: does not combine with objective=rmu, which chooses the weights that train itself "
        "(objective.trainable_layers, objective.params)"]


def test_precision_defaults(monkeypatch):
    from soul.models import resolve_mixed_precision

    assert composed().mixed_precision == "auto"
    assert resolve_mixed_precision("auto") == "no"  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto") == "bf16" and resolve_mixed_precision("auto", "cpu") == "no"
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("fp16") == "fp16"
    # Real presets keep fp32 master weights; SOUL's official TOFU configs train pure bf16.
    assert composed("model=llama2-7b-tofu").model.dtype == "float32"
    official = composed("experiment=soul_tofu_graddiff_so")
    assert official.model.dtype == "bfloat16" and official.mixed_precision == "bf16"


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_setup, tmp_path):
    guarded_run(tiny_setup, tmp_path, ScriptedObjective(bad_step=5, where="loss"))
    other = Checkpointer(Accelerator(cpu=True), tmp_path, 2, fingerprint="another config")
    with pytest.raises(ValueError, match="written by a run of other settings; resume=false starts this run afresh"):
        other.load()


def test_slurm_launcher_config_composes():
    """The SLURM array launcher: Hydra's submitit plugin with soul's defaults (one GPU per job)."""
    import soul.run  # noqa: F401  (registers the resolvers the output paths use)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "grid=tofu_fo_vs_so",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.max_num_timeout) == (1, 1, 3)
    assert launcher.partition == "gpu" and launcher.name == "soul-tofu_fo_vs_so"
    assert launcher.submitit_folder.endswith("/sweeps/tofu_fo_vs_so/.submitit/%j")  # beside the grid's jobs


def test_the_embedded_official_grid_keeps_fp32():
    """experiment=soul_tofu_* trains Llama-2-7b in pure bf16 as SOUL does; the embedded grid that reuses
    those experiments on the tiny CPU model keeps fp32."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["grid=tofu_fo_vs_so_official", "experiment=soul_tofu_npo_so"])
    assert (cfg.model.name, cfg.model.dtype, cfg.mixed_precision) == ("tiny", "float32", "no")
