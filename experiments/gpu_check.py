"""GPU checks of what CPUs cannot show: run on a machine with one CUDA GPU.

    python experiments/gpu_check.py --out DIR            # about 3 minutes on one H200
    python experiments/gpu_check.py --smoke --out DIR    # tiny sizes, CPU: checks the script itself

(a) Throughput at a realistic size: a randomly initialised Llama (about 1.2B parameters, fp32 master
    weights, bf16 autocast: soul's default on a GPU), batches of 4 x 512 tokens, full forward,
    backward, clipping and step; AdamW, Sophia (GNB curvature pass every 10 steps, as optim=sophia)
    and SOUL's in-step variant (optim=soul_ref), timed in interleaved blocks. Peak memory per optimizer.
(b) Why fp32 master weights: the same model in pure bf16 (SOUL's and TOFU's code) and in fp32,
    10 AdamW steps at lr 1e-5 on the same batches; the share of weights that never moved.
(c) The copyright task's memorizing fine-tune (soul.memorize) on the GPU under bf16 autocast, full
    and LoRA (merged), on a generated book with SOUL's chunk sizes: loss before and after, steps/s.
(d) Sophia under FSDP2 (accelerate, one process): steps with a curvature pass, a checkpoint through
    accelerate's save_state, reloaded, and the next step identical to an uninterrupted one.

Writes ``gpu_check.json`` to ``--out``; prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soul.optim import CurvatureHook, SophiaG, param_groups  # noqa: E402

RESULTS: dict = {}


def report(key: str, value) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)


def llama(size: str, device) -> LlamaForCausalLM:
    dims = {"large": (2048, 5504, 16, 16, 32000), "medium": (1024, 2816, 8, 8, 32000),
            "smoke": (64, 128, 2, 2, 512)}[size]
    hidden, inter, layers, heads, vocab = dims
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


def make_optimizer(name: str, model):
    groups = param_groups(model, 0.1)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=1e-5, foreach=True), None
    if name == "sophia":
        return SophiaG(groups, lr=1e-5, rho=0.04, bs=2048), CurvatureHook("gnb", interval=10)
    return SophiaG(groups, lr=1e-5, rho=0.04, bs=2048, hessian_in_step=True, double_momentum=True), None


def train_step(model, optimizer, hook, batch, step, autocast):
    with autocast():
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if hook is not None and hook.due(step):
        labels = batch.clone()
        with autocast():
            hook.run(model, optimizer, {"forget": {"input_ids": batch, "attention_mask": torch.ones_like(batch),
                                                   "labels": labels}}, None, 1.0)
    return loss.item()


def throughput(device, size: str, steps: int, blocks: int) -> None:
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    seq, batch_size = (512, 4) if size != "smoke" else (32, 2)
    vocab = 32000 if size != "smoke" else 512
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch_size, seq), generator=gen).to(device) for _ in range(4)]
    model = llama(size, device)
    report("a_parameters_millions", round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {"adamw": [], "sophia": [], "soul_ref": []}
    peaks = {}
    for _ in range(blocks):
        for name in times:
            model.load_state_dict(initial)
            optimizer, hook = make_optimizer(name, model)
            train_step(model, optimizer, hook, batches[0], 1, autocast)  # warm-up (state allocation)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for step in range(2, steps + 2):
                train_step(model, optimizer, hook, batches[step % 4], step, autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[name] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            times[name].append((time.perf_counter() - start) / steps)
            del optimizer, hook
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in times:
        report(f"a_ms_per_step_{name}", round(1000 * med[name], 1))
        report(f"a_ratio_to_adamw_{name}", round(med[name] / med["adamw"], 3))
        if peaks:
            report(f"a_peak_gib_{name}", peaks[name])


def master_weights(device, size: str) -> None:
    """The share of weights that 10 AdamW steps at lr 1e-5 leave exactly unchanged."""
    vocab = 32000 if size != "smoke" else 512
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (2, 128), generator=gen).to(device) for _ in range(10)]
    for label, dtype in (("fp32_master_bf16_autocast", torch.float32), ("pure_bf16", torch.bfloat16)):
        model = llama(size, device).to(dtype)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        unchanged = sum(int((p.detach() == b).sum()) for p, b in zip(model.parameters(), before))
        report(f"b_unchanged_share_{label}", round(unchanged / sum(b.numel() for b in before), 4))
        del model, optimizer


def memorize(device, size: str, out: Path) -> None:
    from soul import memorize as mem
    from soul.data import copyright as book
    from soul.data.book_mini import generate_book
    from soul.data.qa import PromptTemplate
    from soul.tokenizer import train_bpe_tokenizer

    text = generate_book(1500 if size != "smoke" else 400, seed=3)
    low, high, prompt_words = (306, 427, [100, 300]) if size != "smoke" else (50, 70, [10, 20])
    chunks = book.chunk_book(book.split_words(text), low, high, seed=0)
    root = out / "memorize"
    tokenizer = train_bpe_tokenizer([text, *book.SEEN_TEMPLATES], vocab_size=2048 if size != "smoke" else 400)
    model = llama("medium" if size != "smoke" else "smoke", torch.device("cpu"))
    model.resize_token_embeddings(len(tokenizer))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    template = PromptTemplate("### Question: ", "\n", "### Answer: ")
    model_cfg = OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa", "trust_remote_code": False,
                                  "lora_settings": {"r": 8, "alpha": 32, "dropout": 0.05,
                                                    "target_modules": "all-linear"}})
    for lora in (False, True):
        settings = OmegaConf.create({"enabled": True, "lora": lora, "dtype": "float32", "epochs": 20,
                                     "lr": 1e-3 if lora else 3e-4, "batch_size": 4, "grad_accum": 1,
                                     "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0,
                                     "max_length": 1024, "seed": 0})
        start = time.perf_counter()
        path = mem.ensure_memorized_model(root / "cache", str(root / "base"), model_cfg, settings, chunks,
                                          prompt_words, template, "bf16", "auto")
        build = json.loads((path / "soul_build.json").read_text())
        tag = "lora" if lora else "full"
        report(f"c_{tag}_steps", build["steps"])
        report(f"c_{tag}_first_loss", round(build["first_loss"], 3))
        report(f"c_{tag}_final_loss", round(build["final_loss"], 3))
        report(f"c_{tag}_seconds", round(time.perf_counter() - start, 1))


def fsdp_sophia(device, size: str, out: Path) -> None:
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
                                            state_dict_type="SHARDED_STATE_DICT", reshard_after_forward=True)
    accelerator = Accelerator(fsdp_plugin=plugin, mixed_precision="bf16")
    report("d_distributed_type", str(accelerator.distributed_type))
    vocab = 32000 if size != "smoke" else 512
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, vocab, (2, 128), generator=gen) for _ in range(14)]

    def run(steps: range, model, optimizer, hook):
        losses = []
        for step in steps:
            batch = batches[step].to(accelerator.device)
            loss = model(input_ids=batch, labels=batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if hook.due(step):
                hook.run(model, optimizer.optimizer, {"forget": {"input_ids": batch, "labels": batch,
                                                                 "attention_mask": torch.ones_like(batch)}},
                         None, 1.0, clip=accelerator.clip_grad_norm_)
            losses.append(loss.item())
        return losses

    model = llama("medium" if size != "smoke" else "smoke", torch.device("cpu"))
    raw = SophiaG(param_groups(model, 0.1), lr=1e-4, rho=0.04, bs=256)
    model, optimizer = accelerator.prepare(model, raw)
    hook = CurvatureHook("gnb", interval=5)
    report("d_param_type", type(next(model.parameters())).__name__)
    first = run(range(1, 11), model, optimizer, hook)
    ckpt = out / "fsdp_ckpt"
    accelerator.save_state(str(ckpt))
    hook_state = hook.state_dict()
    continued = run(range(11, 14), model, optimizer, hook)
    accelerator.load_state(str(ckpt))
    hook.load_state_dict(hook_state)
    replayed = run(range(11, 14), model, optimizer, hook)
    report("d_losses_first_10", [round(x, 4) for x in first[::3]])
    report("d_curvature_passes", hook.passes)
    report("d_resumed_losses_equal", [round(a, 5) for a in continued] == [round(b, 5) for b in replayed])
    report("d_continued", [round(x, 5) for x in continued])
    report("d_replayed", [round(x, 5) for x in replayed])
    state = raw.state[next(iter(raw.state))]
    report("d_sophia_state_type", type(state["hessian"]).__name__)
    report("d_checkpoint_files", sorted(p.name for p in ckpt.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: test the script")
    parser.add_argument("--only", default="abcd")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = "smoke" if args.smoke else "large"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    report("device", torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    report("torch", torch.__version__)
    parts = {"a": lambda: throughput(device, size, 20 if not args.smoke else 3, 3 if not args.smoke else 1),
             "b": lambda: master_weights(device, "medium" if not args.smoke else "smoke"),
             "c": lambda: memorize(device, size, args.out),
             "d": lambda: fsdp_sophia(device, size, args.out)}
    for key in args.only:
        start = time.perf_counter()
        try:
            parts[key]()
        except Exception as error:  # report and go on: one failing check must not hide the others
            report(f"{key}_error", f"{type(error).__name__}: {error}")
        report(f"{key}_seconds", round(time.perf_counter() - start, 1))
        (args.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2))
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
