"""Benchmark of the TOFU evaluation: batched versus one item at a time, on the embedded default.

    python experiments/bench_eval.py [--reps 3]

Times the full official TOFU evaluation (forget, retain, real authors, world facts: losses of
answers, paraphrases and perturbations, greedy generation with ROUGE) of the cached tiny target
model two ways, interleaved: soul's evaluation (``soul.eval.tofu.evaluate_tofu``: length-sorted
batches, each question run once and shared by its answers through the KV cache, left-padded
batched greedy generation) and a one-item-at-a-time loop (one forward pass per question-answer
pair, one ``generate`` call per question, the same ROUGE scoring). It checks that both give the same per-item values and
prints the median times and the speed-up (target >= 5x). Builds the base models first if the
cache (``$SOUL_CACHE_DIR`` or ~/.cache/soul) has none; that part is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from rouge_score import rouge_scorer

import soul.run  # noqa: F401  (config resolvers)
from soul.data.qa import encode_qa, pad_batch
from soul.eval import tofu_stats
from soul.eval.tofu import PARAPHRASE_KEY, evaluate_tofu
from soul.models import load_pretrained, template_from_config
from soul.tasks.tofu import TofuTask

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def one_item_at_a_time(model, tokenizer, template, eval_sets, max_items=300, max_length=200) -> dict:
    """The same per-item losses, generations and ROUGE, one sequence per forward / generate call."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    log = {}
    for split, key in tofu_stats.SPLIT_FILES.items():
        ds = eval_sets[split]
        rows = [ds[i] for i in range(min(max_items, len(ds)))]
        out = {"avg_gt_loss": {}, "avg_paraphrased_loss": {}, "generated": {}, "rougeL_recall": {}}
        for i, r in enumerate(rows):
            def loss(answer):
                b = pad_batch([encode_qa(tokenizer, template, r["question"], answer)], tokenizer.pad_token_id)
                return float(model(**b).loss)
            out["avg_gt_loss"][str(i)] = loss(r["answer"])
            out["avg_paraphrased_loss"][str(i)] = loss(r[PARAPHRASE_KEY[split]])
            for p in r["perturbed_answer"]:
                loss(p)
            enc = tokenizer(template.generation_prompt(r["question"]), return_tensors="pt")
            gen = model.generate(**enc, max_length=max_length, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out["generated"][str(i)] = text
            out["rougeL_recall"][str(i)] = scorer.score(r["answer"], text)["rougeL"].recall
        log[key] = out
    return log


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--generation-batch-size", type=int, default=None,
                        help="prompts per generation batch (default: task.eval.generation_batch_size)")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=/tmp/unused"])
    template = template_from_config(cfg.model)
    task = TofuTask(cfg)
    task.prepare(template)
    model, tokenizer = load_pretrained(task.model_name())
    model.eval()
    sets = task.splits.eval_sets
    times: dict[str, list[float]] = {"soul": [], "loop": []}
    for _ in range(args.reps):
        start = time.perf_counter()
        log = evaluate_tofu(model, tokenizer, template, sets, batch_size=cfg.task.eval.batch_size,
                            generation_batch_size=args.generation_batch_size or cfg.task.eval.generation_batch_size)
        times["soul"].append(time.perf_counter() - start)
        start = time.perf_counter()
        naive = one_item_at_a_time(model, tokenizer, template, sets)
        times["loop"].append(time.perf_counter() - start)
    worst = max(abs(log[k]["avg_gt_loss"][i] - naive[k]["avg_gt_loss"][i]) for k in naive for i in naive[k]["avg_gt_loss"])
    same_text = all(log[k]["generated_text"][i][1] == naive[k]["generated"][i].strip()
                    and log[k]["rougeL_recall"][i] == naive[k]["rougeL_recall"][i]
                    for k in naive for i in naive[k]["generated"])
    items = sum(log["meta"]["items"].values())
    batched, single = statistics.median(times["soul"]), statistics.median(times["loop"])
    print(f"full TOFU evaluation of the embedded default ({items} items in 4 splits), "
          f"{torch.get_num_threads()} threads, median of {args.reps}:")
    print(f"  soul (batched, shared prefixes): {batched:7.2f} s")
    print(f"  one item at a time:              {single:7.2f} s")
    print(f"  same results: max |avg_gt_loss difference| {worst:.1e}, identical generations and ROUGE: {same_text}")
    paired = sorted(b / a for a, b in zip(times["soul"], times["loop"]))
    ratio = statistics.median(paired)
    print(f"  speed-up per repetition (loop / soul, side by side): {' '.join(f'{r:.1f}' for r in paired)}")
    print(f"  speed-up (median of the paired ratios): {ratio:.1f}x   target >= 5x   {'ok' if ratio >= 5 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
