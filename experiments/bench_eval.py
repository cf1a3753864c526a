"""Benchmark of the TOFU evaluation: batched versus one item at a time, on the embedded default.

    python experiments/bench_eval.py [--reps 3]

Times the full official TOFU evaluation (forget, retain, real authors, world facts: losses of
answers, paraphrases and perturbations, greedy generation with ROUGE; plus MIA on holdout) of
the cached tiny target model, with ``batch_size=32`` (batched, length-sorted, left-padded
generation with KV cache) and with ``batch_size=1`` (one item at a time), interleaved, and prints
the median times and the speed-up (target >= 5x). Builds the base models first if the cache
(``$SOUL_CACHE_DIR`` or ~/.cache/soul) has none; that part is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import soul.run  # noqa: F401  (config resolvers)
from soul.models import load_pretrained, template_from_config
from soul.tasks.tofu import TofuTask

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=/tmp/unused"])
    template = template_from_config(cfg.model)
    task = TofuTask(cfg)
    task.prepare(template)
    model, tokenizer = load_pretrained(task.model_name())
    model.eval()
    times: dict[int, list[float]] = {32: [], 1: []}
    for _ in range(args.reps):
        for batch_size in (32, 1):
            task.task_cfg.eval.batch_size = batch_size
            start = time.perf_counter()
            log = task.evaluate(model, tokenizer, template)
            times[batch_size].append(time.perf_counter() - start)
    items = sum(log["meta"]["items"].values())
    batched, single = statistics.median(times[32]), statistics.median(times[1])
    print(f"full TOFU evaluation of the embedded default ({items} items in 4 splits + MIA on holdout), "
          f"{torch.get_num_threads()} threads, median of {args.reps}:")
    print(f"  batched (batch 32):      {batched:7.2f} s")
    print(f"  one item at a time:      {single:7.2f} s")
    ratio = single / batched
    print(f"  speed-up: {ratio:.1f}x   target >= 5x   {'ok' if ratio >= 5 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
