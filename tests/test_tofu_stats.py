"""Tests for soul.eval.tofu_stats (TOFU aggregation)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soul.eval import tofu_stats as ts

PKG_ROOT = Path(ts.__file__).resolve().parents[2]  # directory holding the soul package
SHARED = Path(__file__).resolve().parents[2] / "shared"
LOGS = SHARED / "data" / "tofu-official-logs"
FULL = LOGS / "llama2-7b_full_wd0.01" / "eval_log_aggregated.json"
RETAIN90 = LOGS / "llama2-7b_retain90_wd0.01" / "eval_log_aggregated.json"

NINE = (
    "retain_prob", "retain_rouge", "retain_truth_ratio",
    "real_authors_prob", "real_authors_rouge", "real_authors_truth_ratio",
    "world_facts_prob", "world_facts_rouge", "world_facts_truth_ratio",
)


# --------------------------------------------------------------------------- #
# synthetic logs
# --------------------------------------------------------------------------- #
def make_split(gt, pert, para, rouge, keys=None):
    """Per-item split log from lists (one entry per item)."""
    keys = keys or [str(i) for i in range(len(gt))]
    return {
        "avg_gt_loss": dict(zip(keys, gt)),
        "average_perturb_loss": dict(zip(keys, pert)),
        "avg_paraphrased_loss": dict(zip(keys, para)),
        "rougeL_recall": dict(zip(keys, rouge)),
    }


L2, L4 = math.log(2.0), math.log(4.0)

# item 0: perturbed losses (1, 3), paraphrased 1 -> s = exp(2 - 1) = e
# item 1: perturbed losses (0.5, 0.5), paraphrased 1 -> s = exp(-0.5)
TR_SPLIT = make_split(gt=[L2, 0.0], pert=[[1.0, 3.0], [0.5, 0.5]], para=[1.0, 1.0], rouge=[1.0, 0.5])
# item 0: P(a)=1/2, P(pert)=(1/4,1/4) -> 1/2 ; item 1: P(a)=1, P(pert)=(1/4,1/4) -> 2/3
PROB_SPLIT = make_split(gt=[L2, 0.0], pert=[[L4, L4], [L4, L4]], para=[0.0, 0.0], rouge=[0.25, 0.75])


def make_log(meta=True):
    log = {
        "eval_log.json": TR_SPLIT,
        "eval_real_author_wo_options.json": PROB_SPLIT,
        "eval_real_world_wo_options.json": PROB_SPLIT,
        "eval_log_forget.json": TR_SPLIT,
    }
    if meta:
        log["meta"] = {"model": "synthetic", "note": "must be ignored"}
    return log


# --------------------------------------------------------------------------- #
# hand-computed cases
# --------------------------------------------------------------------------- #
def test_split_files_mapping():
    assert ts.SPLIT_FILES == {
        "retain": "eval_log.json",
        "real_authors": "eval_real_author_wo_options.json",
        "world_facts": "eval_real_world_wo_options.json",
        "forget": "eval_log_forget.json",
    }


def test_truth_ratio_stat_is_inverse_geometric_mean_ratio():
    s = ts.truth_ratio_stat(TR_SPLIT)
    np.testing.assert_allclose(s, [math.e, math.exp(-0.5)], rtol=1e-12)
    # equivalently 1/R with R = geometric mean of perturbed probs / paraphrased prob
    p_pert = np.exp(-np.array([1.0, 3.0]))
    r_geo = np.sqrt(p_pert.prod()) / math.exp(-1.0)
    assert s[0] == pytest.approx(1.0 / r_geo, rel=1e-12)
    # ... and not the arithmetic-mean variant of utils.py
    r_arith = p_pert.mean() / math.exp(-1.0)
    assert abs(s[0] - 1.0 / r_arith) > 0.1


def test_truth_ratio_stat_orders_items_numerically():
    split = make_split(gt=[0, 0, 0], pert=[[1.0], [2.0], [3.0]], para=[0, 0, 0], rouge=[1, 1, 1],
                       keys=["10", "2", "1"])
    np.testing.assert_allclose(ts.truth_ratio_stat(split), np.exp([3.0, 2.0, 1.0]))


def test_forget_truth_ratio_min_transform():
    st = ts.split_stats(TR_SPLIT, "forget")
    # min(s, 1/s): item0 -> 1/e, item1 -> exp(-0.5)
    assert st["truth_ratio"] == pytest.approx((math.exp(-1) + math.exp(-0.5)) / 2, rel=1e-12)
    assert st["prob"] == pytest.approx((0.5 + 1.0) / 2, rel=1e-12)
    assert st["rouge"] == pytest.approx(0.75, rel=1e-12)


def test_retain_truth_ratio_clipped_transform():
    st = ts.split_stats(TR_SPLIT, "retain")
    # max(0, 1 - 1/s): item0 -> 1 - 1/e, item1 -> max(0, 1 - e^0.5) = 0
    assert st["truth_ratio"] == pytest.approx((1 - math.exp(-1)) / 2, rel=1e-12)
    assert st["prob"] == pytest.approx(0.75, rel=1e-12)  # plain mean exp(-avg_gt_loss)


def test_normalised_prob_for_real_authors_and_world_facts():
    for name in ("real_authors", "world_facts"):
        st = ts.split_stats(PROB_SPLIT, name)
        assert st["prob"] == pytest.approx((0.5 + 2.0 / 3.0) / 2, rel=1e-12)
        assert st["rouge"] == pytest.approx(0.5, rel=1e-12)
        # s = exp(ln4 - 0) = 4 -> 1 - 1/4
        assert st["truth_ratio"] == pytest.approx(0.75, rel=1e-12)
    # the same split treated as retain uses the un-normalised probability
    assert ts.split_stats(PROB_SPLIT, "retain")["prob"] == pytest.approx(0.75, rel=1e-12)


def test_split_stats_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        ts.split_stats(TR_SPLIT, "retain90")


def test_mismatched_item_indices_rejected():
    bad = make_split(gt=[0, 0], pert=[[1.0], [1.0]], para=[0, 0], rouge=[1, 1])
    bad["avg_paraphrased_loss"] = {"0": 0.0, "7": 0.0}
    with pytest.raises(ValueError, match="item indices"):
        ts.truth_ratio_stat(bad)


def test_model_utility_is_harmonic_mean_of_nine():
    comps = ts.model_utility_components(make_log())
    assert tuple(comps) == NINE
    expected = {
        "retain_prob": 0.75, "retain_rouge": 0.75, "retain_truth_ratio": (1 - math.exp(-1)) / 2,
        "real_authors_prob": 7 / 12, "real_authors_rouge": 0.5, "real_authors_truth_ratio": 0.75,
        "world_facts_prob": 7 / 12, "world_facts_rouge": 0.5, "world_facts_truth_ratio": 0.75,
    }
    for k, v in expected.items():
        assert comps[k] == pytest.approx(v, rel=1e-12), k
    hm = 9.0 / sum(1.0 / v for v in expected.values())
    assert ts.model_utility(comps) == pytest.approx(hm, rel=1e-12)
    with pytest.raises(ValueError, match="retain_prob"):
        ts.model_utility({k: v for k, v in comps.items() if k != "retain_prob"})


def test_forget_quality_synthetic():
    log = make_log()
    p, stat = ts.forget_quality(log, log)
    assert p == pytest.approx(1.0) and stat == pytest.approx(0.0)
    # completely separated forget distributions -> KS statistic 1
    other = make_log()
    other["eval_log_forget.json"] = make_split(
        gt=[0, 0], pert=[[10.0], [11.0]], para=[0, 0], rouge=[0, 0])
    p, stat = ts.forget_quality(log, other)
    assert stat == pytest.approx(1.0)
    assert p < 1.0


def test_summarize_keys_types_and_meta_ignored():
    with_meta = ts.summarize(make_log(meta=True))
    without = ts.summarize(make_log(meta=False))
    assert with_meta == without
    assert set(with_meta) == {"model_utility", *NINE, "forget_prob", "forget_rouge",
                              "forget_truth_ratio", "forget_quality", "forget_ks_statistic"}
    assert with_meta["forget_quality"] is None and with_meta["forget_ks_statistic"] is None
    ref = ts.summarize(make_log(), make_log())
    assert type(ref["forget_quality"]) is float and type(ref["forget_ks_statistic"]) is float
    for k, v in ref.items():
        assert type(v) is float, k
    json.dumps(ref)


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def test_load_log_file_and_directories(tmp_path):
    log = make_log()
    f = tmp_path / "log.json"
    f.write_text(json.dumps(log))
    assert ts.summarize(ts.load_log(f)) == ts.summarize(log)

    agg_dir = tmp_path / "agg"
    agg_dir.mkdir()
    (agg_dir / "eval_log_aggregated.json").write_text(json.dumps(log))
    assert ts.summarize(ts.load_log(agg_dir)) == ts.summarize(log)

    split_dir = tmp_path / "split"
    split_dir.mkdir()
    for key in ts.SPLIT_FILES.values():
        (split_dir / key).write_text(json.dumps(log[key]))
    assert ts.summarize(ts.load_log(str(split_dir))) == ts.summarize(log)


def test_load_log_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ts.load_log(missing)

    log = make_log()
    del log["eval_real_world_wo_options.json"]
    f = tmp_path / "no_split.json"
    f.write_text(json.dumps(log))
    with pytest.raises(ValueError, match=r"no_split\.json.*eval_real_world_wo_options\.json"):
        ts.load_log(f)

    log = make_log()
    log["eval_log.json"] = {k: v for k, v in TR_SPLIT.items() if k != "avg_paraphrased_loss"}
    f = tmp_path / "no_field.json"
    f.write_text(json.dumps(log))
    with pytest.raises(ValueError, match=r"no_field\.json.*avg_paraphrased_loss.*'retain'"):
        ts.load_log(f)

    d = tmp_path / "partial"
    d.mkdir()
    (d / "eval_log.json").write_text(json.dumps(TR_SPLIT))
    with pytest.raises(FileNotFoundError, match="eval_log_forget.json"):
        ts.load_log(d)

    f = tmp_path / "garbage.json"
    f.write_text("{not json")
    with pytest.raises(ValueError, match="garbage.json"):
        ts.load_log(f)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def test_cli_prints_summary(tmp_path, capsys):
    f = tmp_path / "log.json"
    f.write_text(json.dumps(make_log()))
    assert ts.cli(["--log", str(f), "--reference", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == pytest.approx(ts.summarize(make_log(), make_log()))
    assert out["forget_quality"] == pytest.approx(1.0)

    assert ts.cli(["--log", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forget_quality"] is None


def test_cli_bad_path(tmp_path, capsys):
    bad = tmp_path / "missing_dir"
    assert ts.cli(["--log", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert str(bad) in err and "\n" not in err

    good = tmp_path / "log.json"
    good.write_text(json.dumps(make_log()))
    assert ts.cli(["--log", str(good), "--reference", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    f = tmp_path / "log.json"
    f.write_text(json.dumps(make_log()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PKG_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-m", "soul.eval.tofu_stats", "--log", str(f)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_utility"] == pytest.approx(ts.summarize(make_log())["model_utility"])


# --------------------------------------------------------------------------- #
# golden values from the official TOFU logs
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def official():
    if not (FULL.is_file() and RETAIN90.is_file()):
        pytest.skip(f"official TOFU logs not found under {LOGS}")
    return {"full": ts.load_log(FULL), "retain90": ts.load_log(RETAIN90)}


def test_golden_model_utility(official):
    assert ts.model_utility(ts.model_utility_components(official["full"])) == pytest.approx(0.6227, abs=1e-4)
    assert ts.model_utility(ts.model_utility_components(official["retain90"])) == pytest.approx(0.6137, abs=1e-4)


def test_golden_components_full(official):
    comps = ts.model_utility_components(official["full"])
    published = {
        "real_authors_rouge": 0.933, "real_authors_prob": 0.4555, "real_authors_truth_ratio": 0.5962,
        "world_facts_rouge": 0.8825, "world_facts_prob": 0.4186, "world_facts_truth_ratio": 0.5390,
        "retain_rouge": 0.9857, "retain_prob": 0.9895, "retain_truth_ratio": 0.4747,
    }
    for k, v in published.items():
        assert comps[k] == pytest.approx(v, abs=1e-3), k


def test_golden_forget_quality(official):
    p, stat = ts.forget_quality(official["full"], official["retain90"])
    assert p == pytest.approx(1.834e-21, rel=1e-3)
    assert stat == pytest.approx(0.3967, abs=1e-4)
    p_self, stat_self = ts.forget_quality(official["retain90"], official["retain90"])
    assert p_self == pytest.approx(1.0) and stat_self == pytest.approx(0.0)


def test_golden_summary(official):
    s = ts.summarize(official["full"], official["retain90"])
    assert s["forget_truth_ratio"] == pytest.approx(0.5160, abs=1e-4)
    assert s["model_utility"] == pytest.approx(0.6227, abs=1e-4)
    assert s["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    assert s["forget_ks_statistic"] == pytest.approx(0.3967, abs=1e-4)
    assert ts.summarize(official["retain90"], official["retain90"])["forget_quality"] == pytest.approx(1.0)
    json.dumps(s)


def test_golden_load_from_directory(official):
    log = ts.load_log(FULL.parent)
    assert ts.summarize(log) == ts.summarize(official["full"])
