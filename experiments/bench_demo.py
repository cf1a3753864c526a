"""Benchmark of the default experiment: cold and warm wall time, and the embedded benchmark's quality.

    python experiments/bench_demo.py            # cold run (empty cache) then warm run, same process tree

Cold = ``python -m soul.run`` with an empty cache, so it generates tofu-mini, trains the tokenizer
and both tiny base models, unlearns and evaluates; warm = the same command again. It prints both
times as ratios of the targets (cold <= 600 s, warm <= 90 s) and the quality of the base models
(the embedded benchmark's acceptance numbers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"cold_seconds": 600.0, "warm_seconds": 90.0}
QUALITY = [  # (model, metric, comparison, bound): the acceptance bounds of the embedded default
    ("before", "forget_rouge", ">=", 0.9), ("retain model", "forget_rouge", "<=", 0.5),
    ("before", "forget_quality", "<=", 1e-3),
    *[(m, k, ">=", 0.8) for m in ("before", "retain model")
      for k in ("retain_rouge", "real_authors_rouge", "world_facts_rouge")],
]


def timed_run(cache: Path, out: Path, *overrides: str) -> float:
    env = {**os.environ, "SOUL_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "soul.run", f"hydra.run.dir={out}", *overrides], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = timed_run(tmp / "cache", tmp / "cold")
        warm = timed_run(tmp / "cache", tmp / "warm")
        baseline = json.loads((tmp / "warm" / "baseline_metrics.json").read_text())
        after = json.loads((tmp / "warm" / "metrics.json").read_text())
    print(f"cold run: {cold:7.1f} s   ratio to the {TARGETS['cold_seconds']:.0f} s target: {cold / TARGETS['cold_seconds']:.2f}")
    print(f"warm run: {warm:7.1f} s   ratio to the {TARGETS['warm_seconds']:.0f} s target: {warm / TARGETS['warm_seconds']:.2f}")
    print("\nembedded benchmark (tofu-mini forget10, tiny Llama):")
    ok = cold <= TARGETS["cold_seconds"] and warm <= TARGETS["warm_seconds"]
    for model, key, op, bound in QUALITY:
        value = baseline[model][key]
        passed = value >= bound if op == ">=" else value <= bound
        ok &= passed
        print(f"  {model:13s} {key:20s} {value:10.4g}  (want {op} {bound:g})  {'ok' if passed else 'FAIL'}")
    print("\ndefault unlearning run (GradDiff, AdamW):")
    for key in ("forget_quality", "model_utility", "forget_rouge", "retain_rouge"):
        print(f"  {key:20s} before {baseline['before'][key]:10.4g}  after {after[key]:10.4g}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
