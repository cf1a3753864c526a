"""soul.data.tofu: schema errors, the forget/retain pairing, and the hub wiring (spec 1.1, 7.3).

The hub path is checked without network: a call recorder stands in for
``datasets.load_dataset`` and the exact calls are asserted, and a subprocess in offline
mode shows the real call fails naming ``locuslab/TOFU``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest

import soul.data.tofu as tofu
from soul.data import tofu_mini
from soul.data.tofu import SchemaError, check_split_pair, load_split, load_tofu, retain_split_for

SMALL = tofu_mini.TofuMiniConfig(num_authors=20, questions_per_author=3, num_holdout_authors=2,
                                 retain_perturbed_size=10, real_authors_size=8, world_facts_size=8)
EVAL_CONFIGS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


@pytest.fixture(scope="module")
def rows():
    return tofu_mini.generate(SMALL)


@pytest.fixture
def data_dir(tmp_path):
    return tofu_mini.write(tmp_path / "tofu", SMALL)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def questions(data) -> list[str]:
    """The question column of a Dataset or of a list of row dicts."""
    if isinstance(data, datasets.Dataset):
        return list(data["question"])
    return [row["question"] for row in data]


# --------------------------------------------------------------------------- #
# schema errors on the local path
# --------------------------------------------------------------------------- #
def test_missing_column_names_file_and_column(data_dir, rows):
    path = data_dir / "forget10.json"
    write_jsonl(path, [{"question": r["question"]} for r in rows["forget10"]])
    with pytest.raises(SchemaError) as info:
        load_split("forget10", "local", data_dir)
    message = str(info.value)
    assert str(path) in message
    assert "'answer'" in message and "forget10" in message


def test_missing_perturbed_column(data_dir, rows):
    path = data_dir / "retain_perturbed.json"
    write_jsonl(path, [{k: v for k, v in r.items() if k != "paraphrased_answer"}
                       for r in rows["retain_perturbed"]])
    with pytest.raises(SchemaError, match="paraphrased_answer") as info:
        load_split("retain_perturbed", "local", data_dir)
    assert str(path) in str(info.value)


def test_wrong_perturbed_length_names_row_and_config(data_dir, rows):
    bad = [dict(r) for r in rows["forget10_perturbed"]]
    bad[2]["perturbed_answer"] = bad[2]["perturbed_answer"][:4]
    path = data_dir / "forget10_perturbed.json"
    write_jsonl(path, bad)
    with pytest.raises(SchemaError) as info:
        load_split("forget10_perturbed", "local", data_dir)
    message = str(info.value)
    assert "row 2" in message and "forget10_perturbed" in message and str(path) in message
    assert "5" in message


def test_general_knowledge_needs_three_options(data_dir, rows):
    bad = [dict(r) for r in rows["world_facts_perturbed"]]
    bad[0]["perturbed_answer"] = bad[0]["perturbed_answer"] + ["Atlantis"]  # 4 instead of 3
    write_jsonl(data_dir / "world_facts_perturbed.json", bad)
    with pytest.raises(SchemaError, match=r"row 0 of 'world_facts_perturbed'"):
        load_split("world_facts_perturbed", "local", data_dir)


def test_empty_file_rejected(data_dir):
    (data_dir / "holdout10.json").write_text('{"question": "q", "answer": "a"}\n')
    assert len(load_split("holdout10", "local", data_dir)) == 1
    ds = datasets.Dataset.from_dict({"question": [], "answer": []})
    with pytest.raises(SchemaError, match="no rows"):
        tofu.validate_schema(ds, "holdout10", origin="somewhere")


def test_unknown_config_rejected():
    ds = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    with pytest.raises(SchemaError, match="forget20"):
        tofu.validate_schema(ds, "forget20", origin="somewhere")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_split("forget10", "local", tmp_path)
    assert str(tmp_path / "forget10.json") in str(info.value)


def test_local_needs_data_dir_and_known_source():
    with pytest.raises(ValueError, match="data_dir"):
        load_split("forget10", "local", None)
    with pytest.raises(ValueError, match="source"):
        load_split("forget10", "ftp", "/nowhere")


# --------------------------------------------------------------------------- #
# forget/retain pairing
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("forget, retain", [("forget01", "retain99"), ("forget05", "retain95"),
                                            ("forget10", "retain90")])
def test_retain_split_for(forget, retain):
    assert retain_split_for(forget) == retain
    check_split_pair(forget, retain)  # the right pair passes


@pytest.mark.parametrize("bad", ["forget5", "forget", "retain90", "forget10_perturbed", "Forget10"])
def test_retain_split_for_rejects_non_forget_names(bad):
    with pytest.raises(ValueError, match="forget_split"):
        retain_split_for(bad)


def test_bad_pair_names_both_splits_and_the_right_one():
    with pytest.raises(ValueError) as info:
        check_split_pair("forget05", "retain90")
    message = str(info.value)
    assert "forget05" in message and "retain90" in message and "retain95" in message


@pytest.mark.parametrize("source", ["hub", "local", "embedded"])
def test_bad_pair_fails_before_any_load(monkeypatch, tmp_path, source):
    def forbidden(*args, **kwargs):
        pytest.fail(f"load_dataset called before the split pair was checked: {args} {kwargs}")

    monkeypatch.setattr(tofu, "load_dataset", forbidden)
    with pytest.raises(ValueError, match="retain95"):
        load_tofu("forget05", "retain90", "holdout05", source, data_dir=tmp_path)


# --------------------------------------------------------------------------- #
# local happy path
# --------------------------------------------------------------------------- #
def test_load_tofu_local(data_dir, rows):
    splits = load_tofu("forget05", "retain95", "holdout05", "local", data_dir=data_dir)
    assert questions(splits.forget) == questions(rows["forget05"])
    assert questions(splits.retain) == questions(rows["retain95"])
    assert questions(splits.holdout) == questions(rows["holdout05"])
    assert set(splits.eval_sets) == {"forget", "retain", "real_authors", "world_facts"}
    assert questions(splits.eval_sets["forget"]) == questions(rows["forget05_perturbed"])
    assert questions(splits.eval_sets["retain"]) == questions(rows["retain_perturbed"])
    assert questions(splits.eval_sets["real_authors"]) == questions(rows["real_authors_perturbed"])
    assert questions(splits.eval_sets["world_facts"]) == questions(rows["world_facts_perturbed"])
    assert load_tofu("forget05", "retain95", None, "local", data_dir=data_dir).holdout is None


# --------------------------------------------------------------------------- #
# hub wiring
# --------------------------------------------------------------------------- #
class HubRecorder:
    """Stands in for ``datasets.load_dataset``: records each call, serves tofu-mini rows."""

    def __init__(self, rows):
        self.rows = rows
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return datasets.Dataset.from_list(self.rows[args[1]])


def hub_call(config: str, hub_id: str = "locuslab/TOFU"):
    return ((hub_id, config), {"split": "train"})


def as_counter(calls):
    return Counter((args, tuple(sorted(kwargs.items()))) for args, kwargs in calls)


@pytest.mark.parametrize("percent", ["10", "05", "01"])
def test_hub_calls_exact(monkeypatch, rows, percent):
    recorder = HubRecorder(rows)
    monkeypatch.setattr(tofu, "load_dataset", recorder)
    forget, holdout = f"forget{percent}", f"holdout{percent}"
    retain = retain_split_for(forget)
    assert retain == {"10": "retain90", "05": "retain95", "01": "retain99"}[percent]
    splits = load_tofu(forget, retain, holdout, "hub")

    expected = [hub_call(forget), hub_call(retain), hub_call(f"{forget}_perturbed"),
                hub_call("retain_perturbed"), hub_call("real_authors_perturbed"),
                hub_call("world_facts_perturbed"), hub_call(holdout)]
    assert as_counter(recorder.calls) == as_counter(expected)
    # each dataset ends up where it belongs
    assert questions(splits.forget) == questions(rows[forget])
    assert questions(splits.retain) == questions(rows[retain])
    assert questions(splits.holdout) == questions(rows[holdout])
    assert questions(splits.eval_sets["forget"]) == questions(rows[f"{forget}_perturbed"])
    assert questions(splits.eval_sets["retain"]) == questions(rows["retain_perturbed"])


def test_hub_id_override_and_no_holdout(monkeypatch, rows):
    recorder = HubRecorder(rows)
    monkeypatch.setattr(tofu, "load_dataset", recorder)
    load_tofu("forget10", "retain90", None, "hub", hub_id="mirror/TOFU")
    assert as_counter(recorder.calls) == as_counter(
        [hub_call(c, "mirror/TOFU") for c in ("forget10", "retain90", "forget10_perturbed", *EVAL_CONFIGS)])


def test_hub_schema_checked_with_hub_id(monkeypatch, rows):
    broken = {**rows, "retain90": [{"question": r["question"]} for r in rows["retain90"]]}
    monkeypatch.setattr(tofu, "load_dataset", HubRecorder(broken))
    with pytest.raises(SchemaError, match=r"locuslab/TOFU.*'answer'"):
        load_tofu("forget10", "retain90", None, "hub")


def test_hub_offline_names_repo(tmp_path):
    code = (
        "from soul.data.tofu import load_split\n"
        "try:\n"
        "    load_split('forget10', 'hub')\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, type(err.__cause__).__name__)\n"
        "    print(err)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_DATASETS_CACHE", None)
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, _, message = proc.stdout.partition("\n")
    assert first != "NO ERROR"
    assert "ConnectionError" in first.split(), proc.stdout  # the error or its cause (spec 7.3)
    assert "locuslab/TOFU" in message
    assert "forget10" in message
