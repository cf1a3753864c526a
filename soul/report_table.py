"""The short summary table printed at the end of every run."""

from __future__ import annotations

from pathlib import Path

SUMMARY_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio",
                "retain_rouge", "retain_prob", "real_authors_rouge", "world_facts_rouge",
                "mia_min_k_auc", "privleak", "forget_extraction_strength",
                "wmdp_bio_acc", "wmdp_cyber_acc", "mmlu_acc",
                "bleu", "rougeL_recall", "rougeL_seen_100", "rougeL_seen_300", "rougeL_unseen_100",
                "rougeL_unseen_300", "perplexity", "zero_shot_acc")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if abs(value) < 1e-3 and value != 0:
        return f"{value:.2e}"
    return f"{value:.4f}"


def summary_table(title: str, columns: dict[str, dict | None], out_dir: Path | None = None) -> str:
    """A plain-text table: one row per headline metric, one column per model."""
    names = [name for name, values in columns.items() if values is not None]
    width = max(len(k) for k in SUMMARY_KEYS) + 2
    lines = [title, "-" * len(title), "".join(["metric".ljust(width)] + [n.rjust(14) for n in names])]
    for key in SUMMARY_KEYS:
        if any(columns[n].get(key) is not None for n in names):
            lines.append("".join([key.ljust(width)] + [_fmt(columns[n].get(key)).rjust(14) for n in names]))
    if out_dir is not None:
        lines.append(f"run directory: {out_dir}")
    return "\n".join(lines)
