"""Invariants of tofu-mini, the offline TOFU stand-in (benchmark-specs.md 1.1, 7.2, 7.3).

Authors are recovered from the question text (the capitalised words after the first one
are the author's name), so the partition checks do not depend on how the generator orders
its rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import datasets
import pytest

from soul.data import tofu, tofu_mini
from soul.data.tofu_mini import TofuMiniConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
OFFICIAL = SHARED / "data" / "tofu-official"

# Spec 1.1: TOFU's configuration names and their columns.
QA = {"question", "answer"}
PERTURBED = QA | {"paraphrased_question", "paraphrased_answer", "perturbed_answer"}
GENERAL = QA | {"perturbed_answer"}
SPEC_COLUMNS = {
    "full": QA,
    **{f"forget{p}": QA for p in ("01", "05", "10")},
    **{f"retain{p}": QA for p in ("90", "95", "99")},
    **{f"holdout{p}": QA for p in ("01", "05", "10")},
    **{f"forget{p}_perturbed": PERTURBED for p in ("01", "05", "10")},
    "retain_perturbed": PERTURBED,
    "real_authors_perturbed": GENERAL,
    "world_facts_perturbed": GENERAL,
    "real_authors": QA,
    "world_facts": QA,
}
PERCENTS = (1, 5, 10)

SMALL = TofuMiniConfig(num_authors=20, questions_per_author=5, num_holdout_authors=2,
                       retain_perturbed_size=12, real_authors_size=10, world_facts_size=9, seed=7)
CONFIGS = [pytest.param(TofuMiniConfig(), id="default"), pytest.param(SMALL, id="small")]

_generated: dict[TofuMiniConfig, dict[str, list[dict]]] = {}


def gen(config: TofuMiniConfig) -> dict[str, list[dict]]:
    """generate(), memoised per config (the tests never mutate the rows)."""
    if config not in _generated:
        _generated[config] = tofu_mini.generate(config)
    return _generated[config]


def author_of(question: str) -> str:
    """The author named in a fictitious-author question: its capitalised words but the first."""
    words = re.findall(r"[A-Za-z']+", question)[1:]
    name = " ".join(w for w in words if w[0].isupper())
    assert len(name.split()) == 2, f"cannot find a two-word author name in {question!r}"
    return name


def authors(rows: list[dict]) -> set[str]:
    return {author_of(r["question"]) for r in rows}


def questions(rows: list[dict]) -> list[str]:
    return [r["question"] for r in rows]


def qa_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in rows]


def n_forget_authors(num_authors: int, percent: int) -> int:
    """Spec 7.2: forgetXX holds ceil(XX%) of the authors (at least one)."""
    return max(1, math.ceil(num_authors * percent / 100))


# --------------------------------------------------------------------------- #
# names, columns, shapes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("config", CONFIGS)
def test_all_tofu_configs_with_their_columns(config):
    out = gen(config)
    assert set(out) == set(SPEC_COLUMNS)
    for name, rows in out.items():
        assert rows, f"{name} is empty"
        for i, row in enumerate(rows):
            assert set(row) == SPEC_COLUMNS[name], f"{name} row {i}: {sorted(row)}"
            for col in SPEC_COLUMNS[name] - {"perturbed_answer"}:
                assert isinstance(row[col], str) and row[col].strip(), f"{name} row {i} {col}"


def test_schema_table_matches_spec():
    assert {k: set(v) for k, v in tofu.EXPECTED_COLUMNS.items()} == SPEC_COLUMNS
    assert tofu.PERTURBED_LENGTH == {"forget01_perturbed": 5, "forget05_perturbed": 5,
                                     "forget10_perturbed": 5, "retain_perturbed": 5,
                                     "real_authors_perturbed": 3, "world_facts_perturbed": 3}


@pytest.mark.parametrize("config", CONFIGS)
def test_perturbed_answer_lengths(config):
    out = gen(config)
    for name in SPEC_COLUMNS:
        if "perturbed_answer" not in SPEC_COLUMNS[name]:
            continue
        want = 3 if name.startswith(("real_authors", "world_facts")) else 5
        for i, row in enumerate(out[name]):
            options = row["perturbed_answer"]
            assert isinstance(options, list) and len(options) == want, f"{name} row {i}"
            assert all(isinstance(o, str) and o.strip() for o in options), f"{name} row {i}"


# --------------------------------------------------------------------------- #
# the split structure of spec 1.1
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("config", CONFIGS)
def test_forget_retain_partition_full(config):
    out = gen(config)
    full = out["full"]
    assert len(set(questions(full))) == len(full), "duplicate questions in full"
    for p in PERCENTS:
        forget, retain = out[f"forget{p:02d}"], out[f"retain{100 - p:02d}"]
        assert len(forget) + len(retain) == len(full)
        # as question sets
        assert not set(questions(forget)) & set(questions(retain))
        assert set(questions(forget)) | set(questions(retain)) == set(questions(full))
        # the same (question, answer) pairs as in full
        assert set(qa_pairs(forget)) | set(qa_pairs(retain)) == set(qa_pairs(full))
        # by author: no author is split between forget and retain
        assert not authors(forget) & authors(retain), f"forget{p:02d}/retain{100 - p:02d} share authors"
        assert authors(forget) | authors(retain) == authors(full)


@pytest.mark.parametrize("config", CONFIGS)
def test_forget_splits_nested(config):
    out = gen(config)
    f01, f05, f10 = (set(qa_pairs(out[f"forget{p:02d}"])) for p in PERCENTS)
    assert f01 <= f05 <= f10
    r99, r95, r90 = (set(qa_pairs(out[f"retain{p}"])) for p in (99, 95, 90))
    assert r90 <= r95 <= r99


@pytest.mark.parametrize("config", CONFIGS)
def test_perturbed_row_aligned_with_forget(config):
    out = gen(config)
    for p in PERCENTS:
        forget, perturbed = out[f"forget{p:02d}"], out[f"forget{p:02d}_perturbed"]
        assert qa_pairs(perturbed) == qa_pairs(forget)  # same rows, same order


@pytest.mark.parametrize("config", CONFIGS)
def test_paraphrases_and_perturbations_differ_from_answer(config):
    out = gen(config)
    for name in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        for i, row in enumerate(out[name]):
            assert row["paraphrased_answer"] != row["answer"], f"{name} row {i}"
            assert row["paraphrased_question"] != row["question"], f"{name} row {i}"
            assert author_of(row["paraphrased_question"]) == author_of(row["question"]), f"{name} row {i}"
            assert row["answer"] not in row["perturbed_answer"], f"{name} row {i}"
            assert row["paraphrased_answer"] not in row["perturbed_answer"], f"{name} row {i}"


@pytest.mark.parametrize("config", CONFIGS)
def test_holdout_disjoint_from_full(config):
    out = gen(config)
    full_q, full_a = set(questions(out["full"])), authors(out["full"])
    for p in PERCENTS:
        hold = out[f"holdout{p:02d}"]
        assert not set(questions(hold)) & full_q
        assert not authors(hold) & full_a


@pytest.mark.parametrize("config", CONFIGS)
def test_retain_perturbed_inside_retain90(config):
    out = gen(config)
    rp = out["retain_perturbed"]
    assert set(questions(rp)) <= set(questions(out["retain90"]))
    assert set(qa_pairs(rp)) <= set(qa_pairs(out["retain90"]))
    assert not set(questions(rp)) & set(questions(out["forget10"]))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", ["real_authors_perturbed", "world_facts_perturbed"])
def test_general_knowledge_sets(config, name):
    out = gen(config)
    rows = out[name]
    for i, row in enumerate(rows):
        assert row["answer"] not in row["perturbed_answer"], f"{name} row {i}"
        assert len(set(row["perturbed_answer"])) == 3, f"{name} row {i}: repeated options"
    plain = name.removesuffix("_perturbed")
    assert qa_pairs(out[plain]) == qa_pairs(rows)
    # general knowledge is never part of the fictitious-author sets
    assert not set(questions(rows)) & set(questions(out["full"]))


# --------------------------------------------------------------------------- #
# configuration
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("config", CONFIGS)
def test_sizes_follow_config(config):
    out = gen(config)
    q = config.questions_per_author
    assert len(out["full"]) == config.num_authors * q
    assert len(authors(out["full"])) == config.num_authors
    per_author = {}
    for row in out["full"]:
        per_author[author_of(row["question"])] = per_author.get(author_of(row["question"]), 0) + 1
    assert set(per_author.values()) == {q}
    for p in PERCENTS:
        n = n_forget_authors(config.num_authors, p)
        assert len(out[f"forget{p:02d}"]) == n * q
        assert len(authors(out[f"forget{p:02d}"])) == n
        assert len(out[f"retain{100 - p:02d}"]) == (config.num_authors - n) * q
        assert len(out[f"holdout{p:02d}"]) == min(n, config.num_holdout_authors) * q
    assert len(out["retain_perturbed"]) == min(config.retain_perturbed_size, len(out["retain90"]))
    assert len(out["real_authors_perturbed"]) == len(out["real_authors"]) == config.real_authors_size
    assert len(out["world_facts_perturbed"]) == len(out["world_facts"]) == config.world_facts_size


def test_twenty_authors_give_spec_author_counts():
    """Spec 7.2: N = 20 authors gives exactly 1, 1 and 2 forget authors."""
    out = gen(SMALL)
    assert [len(authors(out[f"forget{p:02d}"])) for p in PERCENTS] == [1, 1, 2]


def test_questions_per_author_changes_questions():
    few = tofu_mini.generate(dataclasses.replace(SMALL, questions_per_author=2))
    assert len(few["full"]) == SMALL.num_authors * 2
    assert len(authors(few["full"])) == SMALL.num_authors


@pytest.mark.parametrize("config", CONFIGS)
def test_deterministic_per_seed(config):
    assert tofu_mini.generate(config) == gen(config)
    other = tofu_mini.generate(dataclasses.replace(config, seed=config.seed + 1))
    assert set(other) == set(gen(config))
    assert other["full"] != gen(config)["full"]
    assert other["forget10_perturbed"] != gen(config)["forget10_perturbed"]


@pytest.mark.parametrize("field, value", [
    ("questions_per_author", 0),
    ("questions_per_author", len(tofu_mini.QUESTION_TYPES) + 1),
    ("questions_per_author", -3),
    ("num_authors", 1),
    ("real_authors_size", 10_000),
    ("world_facts_size", 10_000),
])
def test_invalid_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        TofuMiniConfig(**{field: value})


# --------------------------------------------------------------------------- #
# files on disk
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu_mini")
    assert tofu_mini.write(root, SMALL) == root
    return root


def test_write_json_lines(written):
    out = gen(SMALL)
    for name, rows in out.items():
        lines = (written / f"{name}.json").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
    assert not list(written.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.parametrize("name", sorted(tofu.EXPECTED_COLUMNS))
def test_written_files_load_locally(written, name):
    ds = tofu.load_split(name, "local", written)
    assert len(ds) == len(gen(SMALL)[name])
    assert set(ds.column_names) == SPEC_COLUMNS[name]
    assert ds[0] == gen(SMALL)[name][0]


def _official(name: str) -> Path:
    path = OFFICIAL / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"official TOFU file not available: {path}")
    return path


@pytest.mark.parametrize("name", ["real_authors_perturbed", "world_facts_perturbed"])
def test_schema_equals_official_files(written, name, tmp_path):
    official_path = _official(name)
    official_rows = [json.loads(line) for line in official_path.read_text().splitlines() if line.strip()]
    mini_rows = gen(SMALL)[name]
    assert {frozenset(r) for r in official_rows} == {frozenset(r) for r in mini_rows}
    assert {len(r["perturbed_answer"]) for r in official_rows} == {len(r["perturbed_answer"]) for r in mini_rows}

    cache = str(tmp_path / "hf_cache")
    official = datasets.load_dataset("json", data_files={"train": str(official_path)}, split="train",
                                     cache_dir=cache)
    mini = datasets.load_dataset("json", data_files={"train": str(written / f"{name}.json")},
                                 split="train", cache_dir=cache)
    list_of_strings = datasets.List(datasets.Value("string"))
    assert official.features["perturbed_answer"] == list_of_strings
    assert mini.features["perturbed_answer"] == list_of_strings
    assert mini.features == official.features
    # and the official files pass soul's own schema check
    tofu.validate_schema(official, name, origin=str(official_path))
