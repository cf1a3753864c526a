"""WMDP: the real corpora and models are wired by id (no network), wmdp-mini has the real
schemas and lm-eval's prompts, and the task runs end to end through the runner."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import REPO, run_in_process
from hydra import compose, initialize_config_dir

import soul.run  # noqa: F401  (config resolvers)
from soul.data import wmdp as wmdp_data
from soul.data import wmdp_mini
from soul.embedded import MCQ_DESCRIPTIONS, mcq_prompt
from soul.eval import harness
from soul.tasks.wmdp import EVAL_TASKS, MMLU_LIKE, WmdpTask

SMALL_WMDP = ["task=wmdp", "task.mini.entities_per_domain=4", "task.mini.general_entities=4",
              "task.mini.values_per_relation=4",
              "task.mini.passages_per_entity=2", "task.mini.wikitext_lines=12", "task.mini.base_epochs=2",
              "model.architecture.vocab_size=400", "model.architecture.hidden_size=32",
              "model.architecture.intermediate_size=64", "model.architecture.num_layers=3",
              "trainer.epochs=1", "task.eval.batch_size=8"]


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return datasets.Dataset.from_dict({"text": ["a passage long enough to keep", ""]})


@pytest.fixture
def recorded(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(wmdp_data, "load_dataset", rec)
    return rec


def test_hub_corpora_are_the_real_ids(recorded):
    corpora = wmdp_data.load_corpora("cyber", "wikitext", "hub", None)
    assert recorded.calls == [(("cais/wmdp-corpora", "cyber-forget-corpus"), {"split": "train"}),
                              (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert corpora.forget == ["a passage long enough to keep"]  # the empty line is dropped
    recorded.calls.clear()
    wmdp_data.load_corpora("cyber", "corpus", "hub", None)
    assert recorded.calls[1] == (("cais/wmdp-corpora", "cyber-retain-corpus"), {"split": "train"})


def test_gated_bio_forget_corpus_comes_from_a_local_file(recorded, tmp_path):
    with pytest.raises(ValueError, match="gated.*task.forget_corpus_path"):
        wmdp_data.load_corpora("bio", "wikitext", "hub", None)
    path = tmp_path / "bio-forget-corpus.jsonl"
    path.write_text('{"text": "x"}\n')
    wmdp_data.load_corpora("bio", "corpus", "hub", None, forget_corpus_path=str(path))
    assert recorded.calls == [(("json",), {"data_files": str(path), "split": "train"}),
                              (("cais/wmdp-corpora", "bio-retain-corpus"), {"split": "train"})]
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        wmdp_data.load_corpora("bio", "wikitext", "hub", None, forget_corpus_path=str(tmp_path / "nowhere.jsonl"))


def test_hub_path_evaluates_the_builtin_lm_eval_tasks():
    task = WmdpTask(composed("task=wmdp", "task.source=hub", "model=zephyr-7b-beta"))
    names, task_dir = task._lm_eval_tasks()
    assert names == {"wmdp_bio": "wmdp_bio", "wmdp_cyber": "wmdp_cyber", "mmlu": "mmlu"} and task_dir is None
    cfg = composed("task=wmdp", "model=zephyr-7b-beta")
    assert cfg.model.hub_id == "HuggingFaceH4/zephyr-7b-beta" and cfg.objective.name == "rmu"
    assert composed("task=wmdp", "objective=npo").objective.name == "npo"  # RMU is only the default


def test_bad_wmdp_settings_are_named():
    with pytest.raises(ValueError, match="task.subset"):
        WmdpTask(composed("task=wmdp", "task.subset=chem"))
    with pytest.raises(ValueError, match="task.retain"):
        WmdpTask(composed("task=wmdp", "task.retain=books"))


def test_wmdp_mini_has_the_real_schemas(tmp_path):
    data = wmdp_mini.write(tmp_path)
    for stem in ("wmdp-bio", "wmdp-cyber", "mmlu"):
        rows = [json.loads(x) for x in (tmp_path / wmdp_mini.FILE_NAMES[stem]).read_text().splitlines()]
        assert rows == data[stem] and rows
        for row in rows:
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4 and row["answer"] in range(4)
        # Every fact a question asks for is stated in its domain's corpus: the questions are answerable.
    bio_text = " ".join(r["text"] for r in data["bio-forget-corpus"])
    assert all(row["choices"][row["answer"]] in bio_text for row in data["wmdp-bio"])
    assert not any(row["choices"][row["answer"]] in bio_text for row in data["mmlu"])
    # Distractors are facts of other entities, stated in the same corpus (none only in the questions).
    for stem, corpus in (("wmdp-bio", "bio-forget-corpus"), ("wmdp-cyber", "cyber-forget-corpus")):
        text = " ".join(r["text"] for r in data[corpus])
        assert all(choice in text for row in data[stem] for choice in row["choices"])
    lines = [r["text"] for r in data["wikitext-2-raw-v1"]]
    assert "" in lines and any(0 < len(t) <= 50 for t in lines)  # RMU's min_len filter has work to do
    assert set(data["mmlu"][0]) == {"question", "subject", "choices", "answer"}


def words_of(rows) -> set[str]:
    return {w.strip(".,?") for row in rows for choice in row["choices"] for w in choice.split()}


def test_hazardous_domains_have_a_lexicon_of_their_own():
    data = wmdp_mini.generate()
    bio, cyber, general = words_of(data["wmdp-bio"]), words_of(data["wmdp-cyber"]), words_of(data["mmlu"])
    fragments = lambda words: {w.lower()[i:i + 3] for w in words for i in range(len(w) - 2)}
    overlap = lambda a, b: len(fragments(a) & fragments(b)) / len(fragments(a) | fragments(b))
    # Three-letter fragments (what sub-word tokens are made of) barely overlap across domains ...
    assert overlap(bio, general) < 0.02 and overlap(cyber, general) < 0.02 and overlap(bio, cyber) < 0.02
    # ... and they do when every domain draws from one syllable inventory.
    shared = wmdp_mini.generate(wmdp_mini.WmdpMiniConfig(distinct_lexicons=False))
    assert overlap(words_of(shared["wmdp-bio"]), words_of(shared["mmlu"])) > 0.1


def test_bad_wmdp_mini_sizes_are_named():
    with pytest.raises(ValueError, match="values_per_relation=12 .*entities per domain \\(10\\)"):
        wmdp_mini.WmdpMiniConfig(entities_per_domain=10, values_per_relation=12)
    with pytest.raises(ValueError, match="values_per_relation=3 must be at least 4"):
        wmdp_mini.WmdpMiniConfig(values_per_relation=3)


def test_rmu_settings_come_from_the_model_preset_on_wmdp():
    tiny, zephyr = composed("task=wmdp"), composed("task=wmdp", "model=zephyr-7b-beta")
    assert (tiny.objective.layer, list(tiny.objective.trainable_layers), tiny.objective.params) == (
        1, [0, 1], "mlp_and_embeddings")
    assert tiny.optim.lr == tiny.model.wmdp.lr and tiny.optim.lr != tiny.model.unlearn_lr
    assert (zephyr.objective.layer, zephyr.objective.params, zephyr.objective.steering_coeff,
            zephyr.objective.alpha, list(zephyr.objective.trainable_layers)) == (7, "down_proj", 6.5, 1200.0, [5, 6, 7])
    # Elsewhere RMU keeps its generic defaults; the command line wins over the preset.
    tofu = composed("task=tofu", "objective=rmu")
    assert (tofu.objective.layer, tofu.objective.steering_coeff, tofu.objective.trainable_layers) == (2, 20.0, None)
    assert tofu.optim.lr == tofu.model.unlearn_lr
    mine = composed("task=wmdp", "optim=sophia", "objective.alpha=7", "optim.lr=5e-4")
    assert (mine.objective.alpha, mine.optim.lr, mine.objective.layer) == (7, 5e-4, 1)
    assert "layer" not in composed("task=wmdp", "objective=npo").objective
    # The task's lr reaches the optimizers that have one and only those (one-shot IU has none).
    assert "lr" not in composed("task=wmdp", "optim=iu").optim


def test_stand_in_prompts_are_lm_evals():
    for stem, key in (("wmdp-bio", "wmdp_bio"), ("wmdp-cyber", "wmdp_cyber"), ("mmlu", MMLU_LIKE)):
        assert MCQ_DESCRIPTIONS[stem] == harness.builtin_task_config(key)["description"]
    builtin = harness.builtin_task_config("wmdp_bio")
    assert builtin["doc_to_text"] == ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                                      "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:")
    assert mcq_prompt("", " Q? ", ["w", "x", "y", "z"]) == "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    assert set(EVAL_TASKS) == {"wmdp_bio", "wmdp_cyber", "mmlu"}


def test_wmdp_runs_end_to_end(cache_dir, tmp_path):
    run_in_process(*SMALL_WMDP, "optim=sophia", out_dir=tmp_path, cache=cache_dir)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("wmdp_bio_acc", "wmdp_cyber_acc", "mmlu_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["forget_acc"] == metrics["wmdp_bio_acc"] and metrics["objective"] == "rmu"
    log = json.loads((tmp_path / "wmdp_eval.json").read_text())
    assert log["meta"]["tasks"] == {"wmdp_bio": "wmdp_bio_mini", "wmdp_cyber": "wmdp_cyber_mini", "mmlu": "mmlu_mini"}
    steps = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps and "rmu_forget" in steps[0] and "clip_fraction" in steps[-1]
