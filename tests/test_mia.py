"""Membership inference, memorization and resumable evaluation."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch

from soul.data.qa import PromptTemplate, encode_qa, pad_batch
from soul.eval import mia
from soul.eval.tofu import evaluate_tofu
from soul.tokenizer import train_bpe_tokenizer


def test_item_scores_by_hand():
    logp = torch.tensor([-0.1, -2.0, -0.5, -3.0, -0.2])
    z = torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0])
    correct = torch.tensor([True, False, True, True, True])
    s = mia.item_scores(logp, z, correct, "an answer")
    assert s["loss"] == pytest.approx(1.16)
    assert s["zlib"] == pytest.approx(1.16 / len(zlib.compress(b"an answer")))
    assert s["min_k"] == pytest.approx(2.5)  # k = 0.4 of 5 tokens: the two lowest, -3 and -2
    assert s["min_k_plus_plus"] == pytest.approx(1.5)
    assert s["exact_memorization"] == pytest.approx(0.8)
    assert s["extraction_strength"] == pytest.approx(1 - 2 / 5)  # suffix from position 2 is all correct


def test_extraction_strength_is_zero_without_a_matching_suffix_and_one_when_all_match():
    logp, z = torch.zeros(4), torch.zeros(4)
    assert mia.item_scores(logp, z, torch.tensor([True, True, True, False]), "x")["extraction_strength"] == 0.0
    assert mia.item_scores(logp, z, torch.ones(4, dtype=torch.bool), "x")["extraction_strength"] == 1.0


def test_auc_orientation_ties_and_privleak():
    # Lower scores = more member-like; forget items scored lower than every holdout item -> AUC 1.
    assert mia.auc([0.1, 0.2], [0.5, 0.9, 1.0]) == 1.0
    assert mia.auc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert mia.auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert mia.auc([0.1, 0.6], [0.5, 0.9]) == pytest.approx(0.75)
    assert mia.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert mia.privleak(1.0, 0.5) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="forget and one holdout"):
        mia.auc([], [0.1])


def test_summarize_mia_needs_both_sets_and_uses_the_reference_for_privleak():
    log = {mia.FORGET_KEY: {k: {"0": 0.1, "1": 0.2} for k in (*mia.ATTACKS, "exact_memorization", "extraction_strength")},
           mia.HOLDOUT_KEY: {k: {"0": 0.9, "1": 0.8} for k in mia.ATTACKS}}
    out = mia.summarize_mia(log)
    assert out["mia_min_k_auc"] == 1.0 and out["privleak"] is None
    assert out["forget_extraction_strength"] == pytest.approx(0.15)
    assert mia.summarize_mia(log, reference=log)["privleak"] == pytest.approx(0.0)
    assert mia.summarize_mia({}) == {}


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = ["Question: who is A?\nAnswer: A is a writer.", "B lives in C.", "perturbed one", "paraphrase here"]
    tok = train_bpe_tokenizer(texts * 5, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    return model, tok


def eval_sets():
    pert = {"question": "who is A?", "answer": "A is a writer.", "paraphrased_question": "A is who?",
            "paraphrased_answer": "a writer, A.", "perturbed_answer": ["A is a baker."] * 5}
    general = {"question": "where is C?", "answer": "C", "perturbed_answer": ["B", "D", "E"]}
    return {"forget": [pert, pert], "retain": [pert], "real_authors": [general], "world_facts": [general]}


def test_mia_scores_match_the_batched_logits(tiny):
    model, tok = tiny
    template = PromptTemplate("Question: ", "\nAnswer:", " ")
    rows = [{"question": "who is A?", "answer": "A is a writer."}, {"question": "where?", "answer": "B lives in C."}]
    scores = mia.score_items(model, tok, template, rows, batch_size=2)
    single = mia.score_items(model, tok, template, rows[1:], batch_size=1)
    for key in scores:
        assert scores[key]["1"] == pytest.approx(single[key]["0"], rel=1e-4, abs=1e-5)
        assert all(math.isfinite(v) for v in scores[key].values())


def test_evaluation_resumes_from_its_partial_log(tiny, tmp_path):
    model, tok = tiny
    template = PromptTemplate("Question: ", "\nAnswer:", " ")
    partial = tmp_path / "partial.json"
    holdout = [{"question": "who is Z?", "answer": "Z is a baker."}]
    full = evaluate_tofu(model, tok, template, eval_sets(), max_items=None, generation_max_length=40, holdout=holdout, partial_path=partial)
    saved = json.loads(partial.read_text())
    del saved["eval_log_forget.json"]  # as if the run died before the forget split
    partial.write_text(json.dumps(saved))
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        resumed = evaluate_tofu(model, tok, template, eval_sets(), max_items=None, generation_max_length=40, holdout=holdout,
                                partial_path=partial)
    finally:
        handle.remove()
    for field in ("avg_gt_loss", "avg_paraphrased_loss", "rougeL_recall"):
        assert resumed["eval_log_forget.json"][field] == pytest.approx(full["eval_log_forget.json"][field])
    assert resumed["eval_log.json"] == saved["eval_log.json"]  # reused, not recomputed
    n_resumed = len(calls)
    calls.clear()
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        evaluate_tofu(model, tok, template, eval_sets(), max_items=None, generation_max_length=40, holdout=holdout, partial_path=tmp_path / "new.json")
    finally:
        handle.remove()
    assert 0 < n_resumed < len(calls)  # only the missing split was computed
    # A different model (weights) never reuses another model's partial log.
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    try:
        other = evaluate_tofu(model, tok, template, eval_sets(), max_items=None, generation_max_length=40, holdout=holdout, partial_path=partial)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(0.01)
    assert other["meta"]["settings"]["fingerprint"] != full["meta"]["settings"]["fingerprint"]


def test_shared_prefix_scoring_equals_one_pass_per_pair(tiny):
    from soul.eval.tofu import answer_nll

    model, tok = tiny
    template = PromptTemplate("Question: ", "\nAnswer:", " ")
    pairs = [("who is A?", "A is a writer."), ("who is A?", "A is a baker."), ("where?", "B lives in C."),
             ("who is A?", "a writer, A."), ("a much longer question about B and C?", "C")]
    shared = answer_nll(model, tok, template, pairs, batch_size=2)
    for (q, a), (total, count) in zip(pairs, shared):
        batch = pad_batch([encode_qa(tok, template, q, a)], tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        assert count == int((labels != -100).sum())
        assert total == pytest.approx(expected, rel=1e-4)


def test_scoring_command_adds_mia_for_soul_logs(tmp_path, capsys):
    from soul.eval import tofu_stats
    from soul.eval.tofu import summarize

    split = {"avg_gt_loss": {"0": 0.1, "1": 0.2}, "rougeL_recall": {"0": 1.0, "1": 0.5},
             "avg_paraphrased_loss": {"0": 0.3, "1": 0.4}, "average_perturb_loss": {"0": [1.0, 2.0], "1": [1.5, 0.5]}}
    log = {key: split for key in tofu_stats.SPLIT_FILES.values()}
    log[mia.FORGET_KEY] = {k: {"0": 0.1, "1": 0.2} for k in (*mia.ATTACKS, "exact_memorization", "extraction_strength")}
    log[mia.HOLDOUT_KEY] = {k: {"0": 0.9, "1": 0.8} for k in mia.ATTACKS}
    path = tmp_path / "log.json"
    path.write_text(json.dumps(log))
    assert tofu_stats.cli(["--log", str(path)], summarize_fn=summarize) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mia_min_k_auc"] == 1.0 and "model_utility" in printed and printed["forget_quality"] is None
