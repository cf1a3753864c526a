"""The copyright task: real-path wiring (recorded calls), errors, perplexity, the stand-in, a full run."""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO, run_in_process
from soul.data import copyright as book
from soul.data.book_mini import generate_book, write_zero_shot_items
from soul.data.qa import PromptTemplate
from soul.eval import harness
from soul.tasks import copyright as copyright_task
from soul.tasks.copyright import CopyrightTask, perplexity

SOUL_ZERO_SHOT = ["boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa", "piqa"]
SMALL_COPYRIGHT = ["task=copyright", "task.mini.book_words=300", "task.mini.heldout_words=200",
                   "task.mini.retain_words=300", "task.mini.zero_shot_items=8", "task.mini.vocab_size=500",
                   "task.mini.base_epochs=2", "task.mini.base_batch_size=8", "task.mini.construction.chunk_words=[60,80]",
                   "task.mini.construction.prompt_words=[20,40]", "task.eval.max_length=128",
                   "model.architecture.hidden_size=32", "model.architecture.intermediate_size=64",
                   "model.architecture.num_layers=2", "trainer.epochs=1", "task.eval.batch_size=32"]


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


def test_bad_copyright_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="task.book_path is required"):
        CopyrightTask(composed("task=copyright", "task.source=local"))
    with pytest.raises(ValueError, match="task.eval.template_sets"):
        CopyrightTask(composed("task=copyright", "task.eval.template_sets=[seen,paraphrased]"))
    with pytest.raises(ValueError, match="prompt_words"):
        CopyrightTask(composed("task=copyright", "task.mini.construction.prompt_words=[100,400]"))
    with pytest.raises(ValueError, match="task.source"):
        CopyrightTask(composed("task=copyright", "task.source=web"))
    task = CopyrightTask(composed("task=copyright", "task.source=local", f"task.book_path={tmp_path}/b.txt",
                                  "model=zephyr-7b-beta"))
    with pytest.raises(ValueError, match="task.heldout_path"):
        task.prepare(PromptTemplate())
    task = CopyrightTask(composed("task=copyright", "task.source=local", f"task.book_path={tmp_path}/missing.txt",
                                  f"task.heldout_path={tmp_path}/h.txt", f"task.retain_path={tmp_path}/r.txt",
                                  "model=zephyr-7b-beta"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        task.prepare(PromptTemplate())


def test_hub_path_reads_the_users_book_and_wikitext(tmp_path, monkeypatch):
    calls = []

    def recorded_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return [{"text": "A line of wikitext , long enough ."}, {"text": ""}] * 100

    monkeypatch.setattr(copyright_task, "load_dataset", recorded_load_dataset)
    (tmp_path / "book.txt").write_text(generate_book(2000, seed=5), encoding="utf-8")
    cfg = composed("task=copyright", "task.source=hub", f"task.book_path={tmp_path}/book.txt", "model=zephyr-7b-beta",
                   "task.memorize.enabled=false")  # the memorizing fine-tune's wiring: tests/test_memorize.py
    task = CopyrightTask(cfg)
    task.prepare(PromptTemplate())
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"}),   # held-out: perplexity
                     (("wikitext", "wikitext-2-raw-v1"), {"split": "train"})]  # retain
    assert task.construction.prompt_words == [100, 300] and task.construction.chunk_words == [306, 427]
    assert all(306 <= len(chunk) <= 427 for chunk in task.chunks)
    # The forget set: every chunk as instruction + first K words -> the rest, for both K.
    assert len(task.forget_rows) == 2 * len(task.chunks)
    first = task.forget_rows[0]
    assert first["question"] == book.SEEN_TEMPLATES[0] + book.join_words(task.chunks[0][:100])
    assert first["answer"] == book.join_words(task.chunks[0][100:])
    # Zero-shot accuracy: SOUL's eight built-in lm-eval tasks, no local folder.
    assert task._zero_shot_tasks() == ({name: name for name in SOUL_ZERO_SHOT}, None)
    rows = task.prompts(300, "unseen")
    assert len(rows) == 6 * len(task.chunks) and rows[0]["prompt"].startswith(book.UNSEEN_TEMPLATES[0])


def test_perplexity_is_the_models_own_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    class Tok:
        bos_token_id = 1

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2 + (ord(c) % 50) for c in text]}

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    text = "a short held-out text"
    ids = torch.tensor([[1] + Tok()(text)["input_ids"]])
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert perplexity(model, Tok(), text, window=64) == pytest.approx(expected, rel=1e-5)
    # Two windows: the mean over every predicted token of both.
    assert perplexity(model, Tok(), text, window=8) != pytest.approx(expected, rel=1e-3)


def test_zero_shot_stand_in_is_arc_easy(tmp_path):
    path = tmp_path / "zeroshot.json"
    write_zero_shot_items(generate_book(800, seed=1), path, num_items=10, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 10
    for row in rows:
        assert row["choices"]["label"] == list("ABCD") and row["answerKey"] in "ABCD"
        assert len(set(row["choices"]["text"])) == 4
    yaml_path = harness.write_local_task("zeroshot_mini", like="arc_easy", data_file=path, out_dir=tmp_path / "tasks")
    import yaml

    local, builtin = yaml.safe_load(yaml_path.read_text()), harness.builtin_task_config("arc_easy")
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        assert local[key] == builtin[key]


def test_copyright_runs_end_to_end(cache_dir, tmp_path):
    run_in_process(*SMALL_COPYRIGHT, "optim=sophia", out_dir=tmp_path, cache=cache_dir)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for template_set in ("seen", "unseen"):
        for k in (20, 40):
            assert 0 <= metrics[f"bleu_{template_set}_{k}"] <= 100 and 0 <= metrics[f"rougeL_{template_set}_{k}"] <= 1
    assert metrics["perplexity"] > 1 and 0 <= metrics["zero_shot_acc"] <= 1 and metrics["task"] == "copyright"
    log = json.loads((tmp_path / "copyright_eval.json").read_text())
    assert log["meta"]["first_token_kept"] and log["meta"]["zero_shot_tasks"] == {"zeroshot_mini": "zeroshot_mini"}
    items = log["items"]["unseen"]["20"]
    assert len(items) == 6 * log["meta"]["chunks"]
    # The reported means are the means of the per-item scores.
    assert log["continuation"]["unseen"]["20"]["rougeL_recall"] == pytest.approx(
        sum(i["rougeL_recall"] for i in items) / len(items))
    baseline = json.loads((tmp_path / "baseline_metrics.json").read_text())["before"]
    assert set(baseline) >= {"bleu", "rougeL_recall", "perplexity", "zero_shot_acc"}



def test_the_first_generated_token_is_kept():
    """The continuation scored is everything after the prompt; SOUL's decoding (from one token past
    the prompt) would lose its first token."""
    from soul.eval.tofu import generate_answers
    from soul.models import build_tiny_llama
    from soul.tokenizer import train_bpe_tokenizer
    from omegaconf import OmegaConf

    tokenizer = train_bpe_tokenizer([generate_book(600, seed=s) for s in range(3)], vocab_size=300)
    torch.manual_seed(0)  # random weights: varied tokens, so the two decodings differ
    model = build_tiny_llama(OmegaConf.create({"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                               "num_heads": 2, "max_position_embeddings": 128}), tokenizer).eval()
    template = PromptTemplate("Question: ", "\nAnswer:", " ")
    question = book.SEEN_TEMPLATES[0] + "the wind howled across the market"
    [generation] = generate_answers(model, tokenizer, template, [question], batch_size=1, max_length=90)
    enc = tokenizer(template.generation_prompt(question), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_length=90, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    start = enc["input_ids"].shape[1]
    assert generation == tokenizer.decode(out[0, start:], skip_special_tokens=True).strip()
    assert generation != tokenizer.decode(out[0, start + 1:], skip_special_tokens=True).strip()
