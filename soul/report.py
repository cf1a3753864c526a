"""Tables and plots from finished runs, in the SOUL paper's layout.

    python -m soul.report outputs/sweeps/tofu_fo_vs_so [more dirs ...] [--out DIR]

Collects every run directory under the given directories (those holding soul's ``config.yaml``),
groups runs that differ only in their seed into one arm, and writes to ``--out`` (default:
``<first dir>/report``):

- ``report.md``: per task and model, a table of mean ± std over seeds (forget quality, model
  utility, forget / retain / real-authors / world-facts ROUGE-L, forget truth ratio, MIA AUC),
  the metric variant and the hyperparameters behind it, second-order versus first-order
  differences paired by seed, and any failed jobs with their errors;
- ``table.csv`` (one row per arm, mean and std of every metric) and ``table.tex`` (booktabs);
- ``fq_vs_mu.png`` (forget quality against model utility, per optimizer and objective) and
  ``training_curves.png`` (forget and retain loss per step, mean over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from soul.jobs import read_status, result_config

# (metric key, column title, better direction); the paper's TOFU table, plus privacy.
COLUMNS = (
    ("forget_quality", "Forget quality", "up"),
    ("model_utility", "Model utility", "up"),
    ("forget_rouge", "Forget ROUGE-L", "down"),
    ("retain_rouge", "Retain ROUGE-L", "up"),
    ("real_authors_rouge", "Real authors ROUGE-L", "up"),
    ("world_facts_rouge", "World facts ROUGE-L", "up"),
    ("forget_truth_ratio", "Forget truth ratio", None),
    ("mia_min_k_auc", "MIA AUC (min-k%)", None),
)
# WMDP: accuracy on the hazardous questions should fall to chance (0.25), MMLU's should stay.
WMDP_COLUMNS = (
    ("forget_acc", "Forget-subset accuracy", "down"),
    ("mmlu_acc", "MMLU accuracy", "up"),
    ("wmdp_bio_acc", "WMDP-Bio accuracy", "down"),
    ("wmdp_cyber_acc", "WMDP-Cyber accuracy", "down"),
)
COPYRIGHT_COLUMNS = (
    ("bleu", "BLEU (mean)", "down"),
    ("rougeL_recall", "ROUGE-L recall (mean)", "down"),
    ("rougeL_seen_100", "ROUGE-L seen K=100", "down"),
    ("rougeL_unseen_100", "ROUGE-L unseen K=100", "down"),
    ("rougeL_unseen_300", "ROUGE-L unseen K=300", "down"),
    ("perplexity", "Held-out perplexity", "down"),
    ("zero_shot_acc", "Zero-shot accuracy", "up"),
)
# Per task: the table's columns and the (x, y) of the trade-off plot.
TASK_VIEWS = {"tofu": (COLUMNS, ("model_utility", "forget_quality")),
              "wmdp": (WMDP_COLUMNS, ("mmlu_acc", "forget_acc")),
              "copyright": (COPYRIGHT_COLUMNS, ("perplexity", "rougeL_recall"))}
LOG_SCALE = {"forget_quality"}  # spans orders of magnitude: averaged and compared in log10
FIRST_ORDER = ("adamw", "sgd", "signsgd")
SECOND_ORDER = ("sophia", "sophia_h", "soul_ref", "iu")
OPTIMIZER_ORDER = FIRST_ORDER + SECOND_ORDER
REFERENCE_FIRST_ORDER = "adamw"
# Keys that change from run to run without being a hyperparameter.
NOT_HYPERPARAMETERS = ("seed", "experiment", "grid")


@dataclass
class Run:
    """One run directory: its resolved config, status and (when finished) metrics."""

    path: Path
    config: dict
    status: dict
    metrics: dict | None
    baseline: dict | None = None
    flat: dict = field(default_factory=dict)

    @property
    def arm_key(self) -> tuple:
        return (self.flat.get("task.name"), self.flat.get("model.name"))


def flatten(data, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    if isinstance(data, dict):
        out: dict = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def collect_runs(dirs: list[Path]) -> list[Run]:
    """Every soul run directory under ``dirs`` (finished, failed or still running)."""
    runs = []
    for root in dirs:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"soul.report: {root} does not exist")
        for config_path in sorted(root.rglob("config.yaml")):
            run_dir = config_path.parent
            inside = run_dir.relative_to(root).parts
            if ".hydra" in inside or "wandb" in inside:  # Hydra's and W&B's own copies
                continue
            config = OmegaConf.to_container(OmegaConf.load(config_path))
            if not isinstance(config, dict) or "objective" not in config or "optim" not in config:
                continue  # not a soul run directory
            status = read_status(run_dir) or {}
            metrics_path = run_dir / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
            if metrics is not None and not status:
                status = {"status": "completed"}  # runs written before status.json existed
            baseline_path = run_dir / "baseline_metrics.json"
            baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else None
            runs.append(Run(run_dir, config, status, metrics, baseline, flatten(result_config(config))))
    return runs


def _varying(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.flat})
    return [k for k in keys if len({json.dumps(r.flat.get(k), sort_keys=True) for r in runs}) > 1]


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def group_arms(runs: list[Run]) -> tuple[dict[tuple, list[Run]], list[str]]:
    """Runs that differ only in their seed form one arm. Returns arms keyed by (objective,
    optimizer, other distinguishing settings) and the settings that distinguish arms."""
    varying = [k for k in _varying(runs) if k not in NOT_HYPERPARAMETERS and k not in ("objective.name", "optim.name")]
    # Settings that come with the objective or optimizer choice itself (e.g. Sophia's rho) do
    # not split an arm; only those that differ among runs of the same objective and optimizer do.
    by_choice: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        by_choice[(r.flat["objective.name"], r.flat["optim.name"])].append(r)
    distinguishing = [k for k in varying if any(len({json.dumps(r.flat.get(k)) for r in group}) > 1
                                                for group in by_choice.values())]
    arms: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        extra = tuple((k, _fmt_value(r.flat.get(k))) for k in distinguishing)
        arms[(r.flat["objective.name"], r.flat["optim.name"], extra)].append(r)

    def order(key):
        objective, optim, extra = key
        rank = OPTIMIZER_ORDER.index(optim) if optim in OPTIMIZER_ORDER else len(OPTIMIZER_ORDER)
        return (objective, extra, rank, optim)

    return dict(sorted(arms.items(), key=lambda kv: order(kv[0]))), distinguishing


def mean_std(values: list[float], log_scale: bool = False) -> tuple[float | None, float | None, int]:
    """Mean and sample std (None when no value); in log10 for log-scale metrics (geometric mean)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    if log_scale:
        logs = np.log10(np.maximum(np.array(vals, dtype=float), 1e-300))
        return float(10 ** logs.mean()), float(logs.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)
    arr = np.array(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def _fmt_stat(mean, std, log_scale: bool, latex: bool = False) -> str:
    if mean is None:
        return "-"
    pm = " $\\pm$ " if latex else " ± "
    if log_scale:  # geometric mean, spread as a factor of 10^std
        return f"{mean:.2e}{pm}{std:.2f} dex"
    return f"{mean:.3f}{pm}{std:.3f}"


def arm_label(key: tuple) -> tuple[str, str, str]:
    objective, optim, extra = key
    kind = "SO" if optim in SECOND_ORDER else "FO" if optim in FIRST_ORDER else ""
    return objective, f"{optim} ({kind})" if kind else optim, ", ".join(f"{k}={v}" for k, v in extra)


def arm_stats(arm_runs: list[Run], columns=COLUMNS) -> dict[str, tuple]:
    done = [r for r in arm_runs if r.metrics is not None]
    return {key: mean_std([r.metrics.get(key) for r in done], key in LOG_SCALE) for key, _, _ in columns}


def table_rows(arms: dict[tuple, list[Run]], columns=COLUMNS) -> list[dict]:
    """One row per arm: labels, seed count and (mean, std, n) of every column."""
    rows = []
    for key, arm_runs in arms.items():
        objective, optim, extra = arm_label(key)
        done = [r for r in arm_runs if r.metrics is not None]
        rows.append({"objective": objective, "optimizer": optim, "settings": extra,
                     "seeds": sorted(r.flat.get("seed", r.config.get("seed")) for r in done),
                     "failed": len(arm_runs) - len(done), "stats": arm_stats(arm_runs, columns)})
    return rows


def markdown_table(rows: list[dict], show_settings: bool, columns=COLUMNS) -> str:
    head = ["Objective", "Optimizer"] + (["Settings"] if show_settings else []) + ["Seeds"]
    head += [f"{title} {'↑' if d == 'up' else '↓' if d == 'down' else ''}".strip() for _, title, d in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["objective"], row["optimizer"]] + ([row["settings"]] if show_settings else [])
        cells.append(str(len(row["seeds"])) + (f" ({row['failed']} failed)" if row["failed"] else ""))
        cells += [_fmt_stat(*row["stats"][key][:2], key in LOG_SCALE) for key, _, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_table(rows: list[dict], caption: str, show_settings: bool, columns=COLUMNS) -> str:
    cols = "ll" + ("l" if show_settings else "") + "r" + "c" * len(columns)
    head = ["Objective", "Optimizer"] + (["Settings"] if show_settings else []) + ["Seeds"]
    head += [title.replace("%", "\\%") for _, title, _ in columns]
    out = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
           " & ".join(head) + " \\\\", "\\midrule"]
    for row in rows:
        cells = [row["objective"], row["optimizer"]] + ([row["settings"]] if show_settings else [])
        cells.append(str(len(row["seeds"])))
        cells += [_fmt_stat(*row["stats"][key][:2], key in LOG_SCALE, latex=True) for key, _, _ in columns]
        out.append(" & ".join(c.replace("_", "\\_") for c in cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\end{table}"]
    return "\n".join(out)


def hyperparameters(runs: list[Run], arms: dict[tuple, list[Run]]) -> str:
    """What every run of the table shares, then each arm's objective and optimizer settings."""
    shared = {k: v for k, v in runs[0].flat.items()
              if k.split(".")[0] in ("trainer", "task", "model", "mixed_precision")
              and not k.startswith(("model.architecture", "model.base_training", "model.template", "task.mini"))
              and all(json.dumps(r.flat.get(k)) == json.dumps(v) for r in runs)}
    lines = ["Shared by every run: " + ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in shared.items()), ""]
    for key, arm_runs in arms.items():
        objective, optim, extra = arm_label(key)
        settings = {k: v for k, v in arm_runs[0].flat.items()
                    if k.startswith(("objective.", "optim.")) and not k.endswith(".name")}
        lines.append(f"- {objective} / {optim}{f' ({extra})' if extra else ''}: "
                     + ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in settings.items()))
    return "\n".join(lines)


def second_vs_first_order(arms: dict[tuple, list[Run]], columns=COLUMNS) -> list[dict]:
    """For each objective (and distinguishing settings), each second-order arm against AdamW,
    paired by seed (same seed = same batches): mean difference and how many seeds it wins."""
    results = []
    for (objective, optim, extra), arm_runs in arms.items():
        if optim not in SECOND_ORDER:
            continue
        fo = arms.get((objective, REFERENCE_FIRST_ORDER, extra))
        if not fo:
            continue
        fo_by_seed = {r.flat.get("seed"): r.metrics for r in fo if r.metrics}
        pairs = [(r.metrics, fo_by_seed[r.flat.get("seed")]) for r in arm_runs
                 if r.metrics and r.flat.get("seed") in fo_by_seed]
        if not pairs:
            continue
        entry = {"objective": objective, "optimizer": optim, "settings": ", ".join(f"{k}={v}" for k, v in extra),
                 "pairs": len(pairs)}
        for key, _, direction in columns[:3]:
            if any(so.get(key) is None or fo_.get(key) is None for so, fo_ in pairs):
                continue
            if key in LOG_SCALE:
                diffs = [math.log10(max(so[key], 1e-300)) - math.log10(max(fo_[key], 1e-300)) for so, fo_ in pairs]
            else:
                diffs = [so[key] - fo_[key] for so, fo_ in pairs]
            better = sum((d > 0) if direction == "up" else (d < 0) for d in diffs)
            entry[key] = {"mean_diff": float(np.mean(diffs)),
                          "std_diff": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                          "so_better": better}
        results.append(entry)
    return results


def comparison_text(comparisons: list[dict], columns=COLUMNS) -> str:
    if not comparisons:
        return "No second-order arm has an AdamW arm with the same objective and seeds to compare against."
    compared = columns[:3]
    titles = [f"{title} ({'SO / FO' if key in LOG_SCALE else 'SO − FO'})" for key, title, _ in compared]
    lines = ["| Objective | Second-order | Pairs | " + " | ".join(titles) + " |", "|---|---|---|" + "---|" * len(compared)]
    for c in comparisons:
        def cell(key: str, direction: str) -> str:
            if key not in c:
                return "-"
            d = c[key]
            n = c["pairs"]
            if key in LOG_SCALE:
                return f"×{10 ** d['mean_diff']:.3g} ({d['mean_diff']:+.2f} ± {d['std_diff']:.2f} dex; SO higher in {d['so_better']}/{n})"
            better = "higher" if direction == "up" else "lower"
            return f"{d['mean_diff']:+.3f} ± {d['std_diff']:.3f} (SO {better} in {d['so_better']}/{n})"
        name = c["objective"] + (f" ({c['settings']})" if c["settings"] else "")
        lines.append(f"| {name} | {c['optimizer']} | {c['pairs']} | "
                     + " | ".join(cell(key, direction) for key, _, direction in compared) + " |")
    return "\n".join(lines)


def plot_fq_vs_mu(arms: dict[tuple, list[Run]], path: Path, title: str,
                  axes: tuple[str, str] = ("model_utility", "forget_quality")) -> None:
    """Forget quality (log) against model utility (or another (x, y) pair of metrics): one point
    per arm (mean, error bars = std over seeds), colour = optimizer, marker = objective; the model
    before unlearning and the retain model when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optims = sorted({k[1] for k in arms}, key=lambda o: OPTIMIZER_ORDER.index(o) if o in OPTIMIZER_ORDER else 99)
    objectives = sorted({k[0] for k in arms})
    colors = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optims)}
    markers = dict(zip(objectives, "osD^vP*Xh<>"))
    # Arms can land on the same point (e.g. two optimizers that both collapse to chance): earlier
    # optimizers get larger markers drawn underneath, so coincident points show as rings.
    sizes = {o: 8 + 3 * (len(optims) - 1 - i) for i, o in enumerate(optims)}
    x_key, y_key = axes
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for (objective, optim, extra), arm_runs in arms.items():
        done = [r.metrics for r in arm_runs if r.metrics and r.metrics.get(y_key) is not None]
        if not done:
            continue
        fq = np.array([m[y_key] for m in done], dtype=float)
        fq = np.log10(np.maximum(fq, 1e-300)) if y_key in LOG_SCALE else fq
        mu = np.array([m[x_key] for m in done], dtype=float)
        ax.errorbar(mu.mean(), fq.mean(), xerr=mu.std(ddof=1) if len(mu) > 1 else 0,
                    yerr=fq.std(ddof=1) if len(fq) > 1 else 0, marker=markers[objective], color=colors[optim],
                    markersize=sizes[optim], capsize=3, linestyle="none", zorder=2 + optims.index(optim))
    for label, key, marker in (("before unlearning", "before", "*"), ("retain model", "retain model", "P")):
        refs = [r.baseline[key] for rs in arms.values() for r in rs
                if r.baseline and r.baseline.get(key) and r.baseline[key].get(y_key) is not None]
        if refs:
            y = refs[0][y_key]
            ax.plot(refs[0][x_key], math.log10(max(y, 1e-300)) if y_key in LOG_SCALE else y, marker=marker,
                    color="black", markersize=11, linestyle="none", label=label)
    handles = [plt.Line2D([], [], color=colors[o], marker="o", linestyle="none", label=o) for o in optims]
    handles += [plt.Line2D([], [], color="gray", marker=markers[o], linestyle="none", label=o) for o in objectives]
    ref_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + ref_handles, fontsize=8, loc="best")
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(("log10 " if y_key in LOG_SCALE else "") + y_key.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _train_log(run: Run) -> list[dict]:
    path = run.path / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs_of(arms: dict[tuple, list[Run]], objective: str) -> list[Run]:
    return [r for (obj, _, _), rs in arms.items() if obj == objective for r in rs]


def plot_training_curves(arms: dict[tuple, list[Run]], path: Path, title: str) -> None:
    """Forget and retain loss per step, one column per objective, one line per optimizer (mean
    over seeds, shaded between the seeds' minimum and maximum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = sorted({k[0] for k in arms})
    fig, axes = plt.subplots(2, len(objectives), figsize=(4.2 * len(objectives), 6.0), squeeze=False, sharex="col")
    optims = sorted({k[1] for k in arms}, key=lambda o: OPTIMIZER_ORDER.index(o) if o in OPTIMIZER_ORDER else 99)
    colors = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optims)}
    for col, objective in enumerate(objectives):
        for row, keys in enumerate((("forget_loss", "rmu_forget"), ("retain_loss", "rmu_retain"))):
            ax = axes[row][col]
            key = next((k for k in keys if any(k in rec for r in runs_of(arms, objective) for rec in _train_log(r)[:1])),
                       keys[0])
            for (obj, optim, extra), arm_runs in arms.items():
                if obj != objective:
                    continue
                logs = [[rec[key] for rec in _train_log(r) if key in rec] for r in arm_runs]
                logs = [lg for lg in logs if lg]
                if not logs:
                    continue
                n = min(len(lg) for lg in logs)
                values = np.array([lg[:n] for lg in logs])
                steps = np.arange(1, n + 1)
                label = optim + (f" ({', '.join(f'{k}={v}' for k, v in extra)})" if extra else "")
                ax.plot(steps, values.mean(0), color=colors[optim], label=label)
                if len(logs) > 1:
                    ax.fill_between(steps, values.min(0), values.max(0), color=colors[optim], alpha=0.15)
            ax.set_title(f"{objective}: {key.replace('_', ' ')}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(dirs: list[Path], out_dir: Path) -> str:
    """Write the report files for the runs under ``dirs`` into ``out_dir``; returns report.md's text."""
    runs = collect_runs(dirs)
    if not runs:
        raise SystemExit(f"soul.report: no soul run directories (with config.yaml) under {', '.join(map(str, dirs))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"# soul report\n\nRuns from {', '.join(f'`{d}`' for d in dirs)}: "
                f"{sum(r.metrics is not None for r in runs)} finished, "
                f"{sum(r.status.get('status') == 'failed' for r in runs)} failed, "
                f"{sum(r.metrics is None and r.status.get('status') != 'failed' for r in runs)} unfinished.\n"
                "Mean ± sample std over seeds; forget quality is averaged in log10 (geometric mean, spread in "
                "dex = orders of magnitude). Arrows: which direction is better (MIA AUC is best near 0.5).\n"]
    csv_rows, tex = [], []
    by_setting: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        by_setting[r.arm_key].append(r)
    for n_table, ((task, model), group) in enumerate(sorted(by_setting.items(), key=lambda kv: str(kv[0]))):
        arms, distinguishing = group_arms(group)
        columns, plot_axes = TASK_VIEWS.get(task, TASK_VIEWS["tofu"])
        variants = sorted({r.metrics.get("metric_variant", "?") for r in group if r.metrics})
        title = f"task={task}, model={model}"
        suffix = "" if len(by_setting) == 1 else f"_{n_table + 1}"
        rows = table_rows(arms, columns)
        show_settings = bool(distinguishing)
        plot_fq_vs_mu(arms, out_dir / f"fq_vs_mu{suffix}.png", title, plot_axes)
        plot_training_curves(arms, out_dir / f"training_curves{suffix}.png", title)
        comparisons = second_vs_first_order(arms, columns)
        sections += [f"## {title}", f"Metric variant: {', '.join(variants) or 'none finished'}.", "",
                     markdown_table(rows, show_settings, columns), "",
                     f"![forget quality vs model utility](fq_vs_mu{suffix}.png)",
                     f"![training curves](training_curves{suffix}.png)", "",
                     "### Second order against first order (AdamW), paired by seed", "",
                     comparison_text(comparisons, columns), "", "### Hyperparameters", "", hyperparameters(group, arms), ""]
        tex.append(latex_table(rows, f"{title}; metric variant {', '.join(variants)}; mean $\\pm$ std over seeds "
                                     "(forget quality: geometric mean, std in dex).", show_settings, columns))
        for row in rows:
            record = {"task": task, "model": model, "metric_variant": "+".join(variants),
                      "objective": row["objective"], "optimizer": row["optimizer"], "settings": row["settings"],
                      "seeds": len(row["seeds"]), "failed": row["failed"]}
            for key, _, _ in columns:
                mean, std, _ = row["stats"][key]
                record[f"{key}_mean"], record[f"{key}_std"] = mean, std
            csv_rows.append(record)
        (out_dir / f"comparison{suffix}.json").write_text(json.dumps(comparisons, indent=2))
    failed = [r for r in runs if r.status.get("status") == "failed"]
    if failed:
        sections += ["## Failed jobs", ""] + [f"- `{r.path}`: {r.status.get('error', 'no error recorded')}"
                                              for r in failed] + [""]
    text = "\n".join(sections)
    (out_dir / "report.md").write_text(text)
    (out_dir / "table.tex").write_text("\n\n".join(tex) + "\n")
    with open(out_dir / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]) if csv_rows else ["task"])
        writer.writeheader()
        writer.writerows(csv_rows)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soul.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories to collect")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <first dir>/report)")
    args = parser.parse_args(argv)
    out_dir = args.out or args.dirs[0] / "report"
    text = build_report(args.dirs, out_dir)
    print(text)
    print(f"\nwritten: {out_dir}/report.md, table.csv, table.tex, fq_vs_mu*.png, training_curves*.png",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
