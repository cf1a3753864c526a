"""TOFU aggregation statistics from per-item evaluation logs (numpy + scipy only).

Implements the official TOFU aggregation (``aggregate_eval_stat.py``):

* per item, ``s_i = exp(mean_k perturb_loss_ik - paraphrased_loss_i)`` (= 1/R_i,
  where R_i is the geometric-mean truth ratio of length-normalised probabilities);
* Truth Ratio = mean_i min(s_i, 1/s_i) on the forget split and
  mean_i max(0, 1 - 1/s_i) on retain / real authors / world facts;
* Prob = mean_i exp(-avg_gt_loss_i) on retain / forget, and the option-normalised
  mean_i P(a)/(P(a) + sum_k P(pert_k)) on real authors / world facts;
* ROUGE = mean_i rougeL_recall;
* Model Utility = harmonic mean of the nine {Prob, ROUGE, Truth Ratio} x
  {retain, real authors, world facts} values;
* Forget Quality = KS-test p-value between the forget-split ``s`` of a model
  and of the retain-only reference model.

A "TOFU per-item log" is a dict with the four keys in :data:`SPLIT_FILES`
(values), each mapping field name -> {item index string -> value}. An optional
top-level ``"meta"`` dict is ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "SPLIT_FILES",
    "AGGREGATED_FILE",
    "UTILITY_KEYS",
    "load_log",
    "truth_ratio_stat",
    "split_stats",
    "model_utility_components",
    "model_utility",
    "forget_quality",
    "summarize",
    "cli",
]

#: short split name -> key (file name) in a TOFU per-item log
SPLIT_FILES: dict[str, str] = {
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
    "forget": "eval_log_forget.json",
}

#: file holding all four splits in one dict (as in the official TOFU repo)
AGGREGATED_FILE = "eval_log_aggregated.json"

#: the nine components of model utility, in TOFU's order of splits
UTILITY_KEYS: tuple[str, ...] = tuple(
    f"{split}_{metric}"
    for split in ("retain", "real_authors", "world_facts")
    for metric in ("prob", "rouge", "truth_ratio")
)

_FORGET_SPLITS = frozenset({"forget"})
_NORMALISED_PROB_SPLITS = frozenset({"real_authors", "world_facts"})

# fields each computation needs
_TR_FIELDS = ("average_perturb_loss", "avg_paraphrased_loss")
_SPLIT_FIELDS = ("avg_gt_loss", "rougeL_recall") + _TR_FIELDS


# --------------------------------------------------------------------------- #
# loading and validation
# --------------------------------------------------------------------------- #
def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _validate_log(log: Any, source: str) -> None:
    if not isinstance(log, Mapping):
        raise ValueError(f"{source}: TOFU log must be a JSON object, got {type(log).__name__}")
    missing = [key for key in SPLIT_FILES.values() if key not in log]
    if missing:
        raise ValueError(f"{source}: TOFU log is missing split key(s) {missing}")
    for name, key in SPLIT_FILES.items():
        split_log = log[key]
        if not isinstance(split_log, Mapping):
            raise ValueError(f"{source}: split {name!r} ({key}) must be an object of fields")
        absent = [f for f in _SPLIT_FIELDS if f not in split_log]
        if absent:
            raise ValueError(
                f"{source}: field(s) {absent} missing in split {name!r} ({key})"
            )


def load_log(path: str | Path) -> dict:
    """Read a TOFU per-item log from ``path``.

    ``path`` is either a JSON file (the aggregated dict with the four split
    keys of :data:`SPLIT_FILES`) or a directory containing either
    ``eval_log_aggregated.json`` or the four per-split files named as those keys.
    A top-level ``"meta"`` entry is kept but never used for computation.

    Raises FileNotFoundError when the path or a needed file is absent, and
    ValueError (naming the path) when a split key or a required field is missing.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        aggregated = p / AGGREGATED_FILE
        if aggregated.is_file():
            log = _read_json(aggregated)
            source = str(aggregated)
        else:
            missing = [key for key in SPLIT_FILES.values() if not (p / key).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{p}: directory has neither {AGGREGATED_FILE} nor the split file(s) {missing}"
                )
            log = {key: _read_json(p / key) for key in SPLIT_FILES.values()}
            source = str(p)
    else:
        log = _read_json(p)
        source = str(p)
    _validate_log(log, source)
    return dict(log)


# --------------------------------------------------------------------------- #
# per-item helpers
# --------------------------------------------------------------------------- #
def _item_keys(field: Mapping[str, Any]) -> list[str]:
    """Item indices sorted numerically when possible (so fields align item-wise)."""
    keys = list(field.keys())
    try:
        return sorted(keys, key=int)
    except (TypeError, ValueError):
        return sorted(keys, key=str)


def _field(split_log: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if name not in split_log:
        raise ValueError(f"field {name!r} missing in split log")
    return split_log[name]


def _aligned(split_log: Mapping[str, Any], names: Sequence[str]) -> tuple[list[str], list[Mapping]]:
    fields = [_field(split_log, n) for n in names]
    keys = _item_keys(fields[0])
    key_set = set(keys)
    for n, f in zip(names, fields):
        if set(f.keys()) != key_set:
            raise ValueError(
                f"fields {names[0]!r} and {n!r} have different item indices"
            )
    if not keys:
        raise ValueError("split log has no items")
    return keys, fields


def truth_ratio_stat(split_log: Mapping[str, Any]) -> np.ndarray:
    """Per-item TOFU ``curr_stat_1`` = exp(mean_k perturb_loss_k - paraphrased_loss).

    Losses are per-token NLLs, so this equals 1/R with
    R = (prod_k P(pert_k))^(1/K) / P(paraphrased), the geometric mean of the
    length-normalised perturbed probabilities over the paraphrased one.
    Items are ordered by their numeric index. The exponent is clipped to [-700, 700] so that a
    collapsed model (losses in the hundreds) gives a finite value, not an overflow or a zero;
    min(s, 1/s), max(0, 1 - 1/s) and the KS ranks are unaffected in practice.
    """
    keys, (pert, para) = _aligned(split_log, _TR_FIELDS)
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        pl = np.asarray(pert[k], dtype=np.float64).ravel()
        if pl.size == 0:
            raise ValueError(f"item {k!r}: empty average_perturb_loss")
        out[i] = math.exp(min(max(float(pl.mean()) - float(para[k]), -700.0), 700.0))
    return out


def _normalised_prob(split_log: Mapping[str, Any]) -> np.ndarray:
    """Per item P(a) / (P(a) + sum_k P(pert_k)), all length-normalised (exp(-avg loss)).

    Computed as a softmax over the negative losses, which is the same number but stays
    defined when every probability underflows (a collapsed model)."""
    keys, (gt, pert) = _aligned(split_log, ("avg_gt_loss", "average_perturb_loss"))
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        neg = -np.concatenate([[float(gt[k])], np.asarray(pert[k], dtype=np.float64).ravel()])
        out[i] = math.exp(neg[0] - (neg.max() + math.log(np.exp(neg - neg.max()).sum())))
    return out


def _values(split_log: Mapping[str, Any], name: str) -> np.ndarray:
    f = _field(split_log, name)
    keys = _item_keys(f)
    if not keys:
        raise ValueError(f"field {name!r} has no items")
    return np.array([float(f[k]) for k in keys], dtype=np.float64)


# --------------------------------------------------------------------------- #
# aggregation
# --------------------------------------------------------------------------- #
def split_stats(split_log: Mapping[str, Any], split_name: str) -> dict[str, float]:
    """Aggregate one split as TOFU's ``aggregate_eval_stat.py`` does.

    * ``prob``: mean exp(-avg_gt_loss) for retain/forget; for real_authors /
      world_facts the option-normalised mean P(a)/(P(a) + sum_k P(pert_k)).
    * ``rouge``: mean rougeL_recall.
    * ``truth_ratio``: with s = :func:`truth_ratio_stat`, mean min(s, 1/s) for
      forget and mean max(0, 1 - 1/s) for the other splits.
    """
    if split_name not in SPLIT_FILES:
        raise ValueError(f"unknown split {split_name!r}; expected one of {list(SPLIT_FILES)}")
    if split_name in _NORMALISED_PROB_SPLITS:
        prob = float(np.mean(_normalised_prob(split_log)))
    else:
        prob = float(np.mean(np.exp(-_values(split_log, "avg_gt_loss"))))
    rouge = float(np.mean(_values(split_log, "rougeL_recall")))
    s = truth_ratio_stat(split_log)
    if split_name in _FORGET_SPLITS:
        tr = float(np.mean(np.minimum(s, 1.0 / s)))
    else:
        tr = float(np.mean(np.maximum(0.0, 1.0 - 1.0 / s)))
    return {"prob": prob, "rouge": rouge, "truth_ratio": tr}


def _split(log: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    key = SPLIT_FILES[name]
    if key not in log:
        raise ValueError(f"TOFU log is missing split key {key!r} ({name})")
    return log[key]


def model_utility_components(log: Mapping[str, Any]) -> dict[str, float]:
    """The nine model-utility inputs ``{split}_{prob,rouge,truth_ratio}`` for
    split in retain, real_authors, world_facts (see :func:`split_stats`)."""
    out: dict[str, float] = {}
    for name in ("retain", "real_authors", "world_facts"):
        for metric, value in split_stats(_split(log, name), name).items():
            out[f"{name}_{metric}"] = value
    return {k: out[k] for k in UTILITY_KEYS}


def model_utility(components: Mapping[str, float]) -> float:
    """Model Utility = scipy.stats.hmean of the nine components in :data:`UTILITY_KEYS`."""
    missing = [k for k in UTILITY_KEYS if k not in components]
    if missing:
        raise ValueError(f"model utility components missing: {missing}")
    return float(stats.hmean([float(components[k]) for k in UTILITY_KEYS]))


def forget_quality(log: Mapping[str, Any], reference_log: Mapping[str, Any]) -> tuple[float, float]:
    """Forget Quality: (pvalue, statistic) of scipy.stats.ks_2samp between
    :func:`truth_ratio_stat` of the forget split of ``log`` and of
    ``reference_log`` (the retain-only model)."""
    a = truth_ratio_stat(_split(log, "forget"))
    b = truth_ratio_stat(_split(reference_log, "forget"))
    res = stats.ks_2samp(a, b)
    return float(res.pvalue), float(res.statistic)


def summarize(log: Mapping[str, Any], reference_log: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Flat dict of plain floats: ``model_utility``, the nine components,
    ``forget_prob``, ``forget_rouge``, ``forget_truth_ratio`` and
    ``forget_quality`` / ``forget_ks_statistic`` (None without a reference)."""
    comps = model_utility_components(log)
    out: dict[str, float | None] = {"model_utility": model_utility(comps)}
    out.update(comps)
    for metric, value in split_stats(_split(log, "forget"), "forget").items():
        out[f"forget_{metric}"] = value
    if reference_log is not None:
        pvalue, statistic = forget_quality(log, reference_log)
        out["forget_quality"] = pvalue
        out["forget_ks_statistic"] = statistic
    else:
        out["forget_quality"] = None
        out["forget_ks_statistic"] = None
    return out


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def cli(argv: Sequence[str] | None = None, summarize_fn=None) -> int:
    """``--log PATH [--reference PATH]``: print the :func:`summarize` JSON (or ``summarize_fn``'s).

    Returns 0 on success, 2 (with a one-line error on stderr) on a bad path/log.
    """
    parser = argparse.ArgumentParser(
        prog="python -m soul.eval.tofu",
        description="Aggregate a TOFU per-item eval log (model utility, forget quality).",
    )
    parser.add_argument("--log", required=True, help="log file or directory")
    parser.add_argument("--reference", default=None, help="retain-only model's log (for forget quality)")
    args = parser.parse_args(argv)
    try:
        log = load_log(args.log)
        ref = load_log(args.reference) if args.reference is not None else None
        result = (summarize_fn or summarize)(log, ref)
    except (OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
