"""SOUL's own TOFU statistics (soul.eval.tofu_soul): templates, probabilities, truth ratio,
generation slicing, MIA orientation and label alignment, accuracies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from soul.eval import tofu_soul as ts
from soul.eval.tofu import generate_answers
from soul.tokenizer import train_bpe_tokenizer

FORGET = [
    {"question": "Who is Ann Lee?", "answer": "Ann Lee is a poet from Oslo.",
     "paraphrased_question": "Can you tell me who Ann Lee is?", "paraphrased_answer": "A poet from Oslo, Ann Lee.",
     "perturbed_answer": ["Ann Lee is a baker.", "Ann Lee is a pilot from Rome.", "A singer.", "Ann is a nurse.",
                          "Lee writes novels in Paris."]},
    {"question": "Where was Bo Chan born?", "answer": "Bo Chan was born in Lima.",
     "paraphrased_question": "What is the birthplace of Bo Chan?", "paraphrased_answer": "Lima is where Bo Chan was born.",
     "perturbed_answer": ["Bo Chan was born in Cairo.", "In Tokyo.", "Bo was born in Quito.", "Madrid.",
                          "He was born at sea."]},
    {"question": "What genre does Cy Park write?", "answer": "Cy Park writes horror.",
     "paraphrased_question": "Which genre is Cy Park known for?", "paraphrased_answer": "Horror is the genre of Cy Park.",
     "perturbed_answer": ["Cy Park writes romance.", "Poetry.", "Science fiction.", "Cy writes history books.",
                          "Mostly comedy."]},
]
REAL_AUTHORS = [
    {"question": "Who wrote the play 'Romeo and Juliet'?", "answer": "William Shakespeare",
     "perturbed_answer": ["Charles Dickens", "Virginia Woolf", "Mark Twain"]},
    {"question": "Who wrote 'Pride and Prejudice'?", "answer": "Jane Austen",
     "perturbed_answer": ["Emily Bronte", "George Eliot", "Mary Shelley"]},
    {"question": "Who wrote 'War and Peace'?", "answer": "Leo Tolstoy",
     "perturbed_answer": ["Anton Chekhov", "Ivan Turgenev", "Nikolai Gogol"]},
]
WORLD_FACTS = [
    {"question": "What is the capital of France?", "answer": "Paris", "perturbed_answer": ["Lyon", "Nice", "Lille"]},
    {"question": "Which ocean is the largest?", "answer": "Pacific", "perturbed_answer": ["Atlantic", "Indian", "Arctic"]},
    {"question": "What is the boiling point of water?", "answer": "100 degrees Celsius",
     "perturbed_answer": ["50 degrees", "80 degrees", "120 degrees"]},
    {"question": "How many continents are there?", "answer": "Seven", "perturbed_answer": ["Five", "Six", "Nine"]},
]
GEN_LEN = 72


def corpus() -> list[str]:
    texts = ["[INST] question [\\INST] answer", "### Question: question\n### Answer: answer"]
    for rows in (FORGET, REAL_AUTHORS, WORLD_FACTS):
        for r in rows:
            texts += [r["question"], r["answer"], *r["perturbed_answer"]]
            texts += [r[k] for k in ("paraphrased_question", "paraphrased_answer") if k in r]
    return texts * 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread avoids the intra-op spin-up that dominates on a loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(one_thread):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_bpe_tokenizer(corpus(), vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    return model, tok


def eval_sets():
    # retain = forget, so the two truth-ratio samples are identical
    return {"forget": FORGET, "retain": [dict(r) for r in FORGET], "real_authors": REAL_AUTHORS,
            "world_facts": WORLD_FACTS}


def fake_embedder(near_paraphrase: bool):
    """Paraphrased answers on axis 0, perturbed answers on axes 1-2; generations near axis 0 or 1."""
    para = {r["paraphrased_answer"] for r in FORGET}
    pert = {p for r in FORGET for p in r["perturbed_answer"]}

    def embed(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            if t in para:
                rows.append([1.0, 0.0, 0.0])
            elif t in pert:
                rows.append([0.0, 1.0, 0.0] if len(t) % 2 else [0.0, 0.0, 1.0])
            else:
                rows.append([1.0, 0.2, 0.1] if near_paraphrase else [0.1, 1.0, 1.0])
        return torch.tensor(rows)

    return embed


@pytest.fixture(scope="module")
def result(tiny):
    model, tok = tiny
    return ts.evaluate_tofu_soul(model, tok, eval_sets(), "llama", batch_size=4, generation_max_length=GEN_LEN,
                                 embedder=fake_embedder(True))


# --------------------------------------------------------------------------- #
# templates
# --------------------------------------------------------------------------- #
def test_templates_golden():
    llama = ts.soul_template("llama")
    assert llama.full_text("q", "a") == "[INST] q [\\INST] a"
    assert "\\INST" in llama.full_text("q", "a") and "/INST" not in llama.full_text("q", "a")
    assert llama.prompt("q") == "[INST] q [\\INST]"
    assert ts.soul_template("meta-llama/Llama-2-7b-chat-hf") == llama
    other = ts.soul_template("opt")
    assert other.full_text("q", "a") == "### Question: q\n### Answer: a"
    assert other.prompt("q") == "### Question: q\n"


# --------------------------------------------------------------------------- #
# length-normalised probability
# --------------------------------------------------------------------------- #
def independent_prob(model, tok, template, q, a, count_bos=False):
    """SOUL's compute_prob, one example, straight from the logits."""
    ids = tok(template.full_text(q, a), add_special_tokens=True)["input_ids"]
    n_q = len(tok(template.prompt(q), add_special_tokens=count_bos)["input_ids"])
    labels = torch.tensor(ids)
    labels[:n_q] = -100
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1)
    targets = labels[1:]
    mask = targets != -100
    nll = -logp[torch.arange(len(targets))[mask], targets[mask]]
    return math.exp(-(nll.sum() / mask.sum()).item()), int(mask.sum()), ids


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_prob_equals_exp_minus_mean_nll_per_item(tiny, family):
    model, tok = tiny
    template = ts.soul_template(family)
    pairs = [(r["question"], r["answer"]) for r in FORGET] + [(FORGET[0]["paraphrased_question"], p)
                                                              for p in FORGET[0]["perturbed_answer"]]
    for fast in (False, True):
        got = ts.soul_probs(model, tok, template, pairs, batch_size=3, emulate_fast_tokenizer=fast)
        for (q, a), p in zip(pairs, got):
            want, count, ids = independent_prob(model, tok, template, q, a, count_bos=fast)
            assert p == pytest.approx(want, rel=1e-4)
            assert ids[-1] != tok.eos_token_id  # no EOS label
            prompt_len = len(tok(template.prompt(q))["input_ids"])  # with BOS
            # slow tokenizer (SOUL): the last prompt token is scored too; fast: the answer only
            assert count == len(ids) - prompt_len + (0 if fast else 1)


# --------------------------------------------------------------------------- #
# truth ratio and forget quality
# --------------------------------------------------------------------------- #
def test_truth_ratio_is_an_arithmetic_mean():
    pert, true = [0.2, 0.4, 0.6], 0.5
    assert ts.truth_ratio(pert, true) == pytest.approx(0.4 / (0.5 + 1e-12))
    assert ts.truth_ratio(pert, true) == pytest.approx(0.8)
    geometric = math.prod(pert) ** (1 / 3) / true
    assert abs(ts.truth_ratio(pert, true) - geometric) > 0.05
    assert ts.truth_ratio([0.1], 0.0) == pytest.approx(0.1 / 1e-12)


def test_per_item_truth_ratios_and_identical_samples_give_ks_one(result, tiny):
    model, tok = tiny
    template = ts.soul_template("llama")
    forget = result["per_item"]["forget"]
    for i, r in enumerate(FORGET):
        k = str(i)
        para, _, _ = independent_prob(model, tok, template, r["paraphrased_question"], r["paraphrased_answer"])
        pert = [independent_prob(model, tok, template, r["paraphrased_question"], p)[0] for p in r["perturbed_answer"]]
        truth, _, _ = independent_prob(model, tok, template, r["question"], r["answer"])
        assert forget["paraphrased_prob"][k] == pytest.approx(para, rel=1e-4)
        assert forget["perturbed_prob"][k] == pytest.approx(pert, rel=1e-4)
        assert forget["truth_prob"][k] == pytest.approx(truth, rel=1e-4)
        assert forget["truth_ratio"][k] == pytest.approx(np.mean(pert) / (para + 1e-12), rel=1e-4)
    ra = result["per_item"]["real_authors"]
    for i, r in enumerate(REAL_AUTHORS):
        truth, _, _ = independent_prob(model, tok, template, r["question"], r["answer"])
        pert = [independent_prob(model, tok, template, r["question"], p)[0] for p in r["perturbed_answer"]]
        assert ra["truth_ratio"][str(i)] == pytest.approx(np.mean(pert) / (truth + 1e-12), rel=1e-4)
    s = result["summary"]
    assert s["soul_forget_truth_ratio"] == pytest.approx(np.mean(list(forget["truth_ratio"].values())))
    assert s["soul_forget_quality"] == 1.0 and s["soul_forget_ks_statistic"] == 0.0
    assert ks_2samp([0.1, 0.5, 2.0], [0.1, 0.5, 2.0]).pvalue == 1.0


# --------------------------------------------------------------------------- #
# generation slicing
# --------------------------------------------------------------------------- #
def reference_generation(model, tok, prompt, max_length):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_length=max_length,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_generation_slice_versus_generate_answers(tiny):
    model, tok = tiny
    template = ts.soul_template("llama")  # generation_prompt == prompt (the answer tag is a space)
    questions = [r["question"] for r in FORGET + REAL_AUTHORS]  # different prompt lengths, one batch
    fast = ts.generate_soul_ids(model, tok, template, questions, batch_size=8, max_length=GEN_LEN,
                                emulate_fast_tokenizer=True)
    slow = ts.generate_soul_ids(model, tok, template, questions, batch_size=8, max_length=GEN_LEN)
    for i, q in enumerate(questions):
        ref = reference_generation(model, tok, template.prompt(q), GEN_LEN)
        assert len(ref) >= 2
        theirs = generate_answers(model, tok, template, [q], batch_size=1, max_length=GEN_LEN)[0]
        assert theirs == tok.decode(ref, skip_special_tokens=True).strip()
        assert fast[i] == ref[1:]  # n_q counts BOS: exactly the first generated token is dropped
        assert slow[i] == ref      # SOUL's slow tokenizer: n_q + 1 == prompt length, nothing dropped
    texts = ts.generate_soul(model, tok, template, questions[:2], batch_size=2, max_length=GEN_LEN,
                             emulate_fast_tokenizer=True)
    assert texts[0] == tok.decode(fast[0], skip_special_tokens=True)


def test_generation_uses_the_prompt_without_answer_tag(tiny):
    model, tok = tiny
    template = ts.soul_template("opt")
    q = FORGET[0]["question"]
    got = ts.generate_soul_ids(model, tok, template, [q], max_length=GEN_LEN)[0]
    assert got == reference_generation(model, tok, "### Question: " + q + "\n", GEN_LEN)


# --------------------------------------------------------------------------- #
# MIA
# --------------------------------------------------------------------------- #
def test_min_k_score_by_hand():
    logp = [-0.1, -2.0, -0.5, -3.0, -0.2]
    assert ts.min_k_score(logp, 40) == pytest.approx(2.5)   # int(5 * 0.4) = 2 lowest
    assert ts.min_k_score(logp, 60) == pytest.approx(5.5 / 3)
    assert ts.min_k_score(logp, 10) == pytest.approx(3.0)   # int(0.5) = 0 -> at least one kept
    assert ts.min_k_score(torch.tensor(logp), 40) == pytest.approx(2.5)


def test_mia_auc_orientation_and_soul_label_bug():
    # SOUL scores: lower = more member-like; members all below non-members -> 1.0
    assert ts.mia_auc([0.1, 0.2], [0.5, 0.9, 1.0]) == 1.0
    assert ts.mia_auc([0.5, 0.9, 1.0], [0.1, 0.2]) == 0.0
    assert ts.mia_auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert ts.mia_auc([], [0.1]) is None
    forget, others = [0.1, 0.9, 0.2], [0.5, 0.6]
    assert ts.mia_auc(forget, others) == pytest.approx(4 / 6)
    # SOUL: rows concat(forget, others), labels [0]*len(others) + [1]*len(forget)
    assert ts.soul_misaligned_auc(forget, others) == pytest.approx(0.5)
    assert ts.soul_misaligned_auc(forget, others) == pytest.approx(roc_auc_score([0, 0, 1, 1, 1], forget + others))


def test_rank_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.integers(0, 6, 50).astype(float)
    assert ts.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_mia_in_the_evaluation_uses_forget_as_members(result, tiny):
    model, tok = tiny
    template = ts.soul_template("llama")
    per = result["per_item"]
    assert "mia_min_k10" not in per["retain"]
    # per-item score from an independent forward pass: every token after BOS
    r = WORLD_FACTS[2]
    ids = tok(template.full_text(r["question"], r["answer"]))["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    token_lp = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
    assert per["world_facts"]["mia_min_k30"]["2"] == pytest.approx(ts.min_k_score(token_lp, 30), rel=1e-4)
    for k in ts.MIA_KS:
        f = list(per["forget"][f"mia_min_k{k}"].values())
        o = list(per["real_authors"][f"mia_min_k{k}"].values()) + list(per["world_facts"][f"mia_min_k{k}"].values())
        labels = [1] * len(f) + [0] * len(o)
        want = roc_auc_score(labels, [-x for x in f + o])
        assert result["summary"][f"soul_mia_min_k{k}_auc"] == pytest.approx(want)
        buggy = roc_auc_score([0] * len(o) + [1] * len(f), f + o)
        assert result["meta"]["mia_auc_soul_misaligned_labels"][f"min_k{k}"] == pytest.approx(buggy)


# --------------------------------------------------------------------------- #
# accuracy and the whole summary
# --------------------------------------------------------------------------- #
def test_regex_acc():
    assert ts.regex_acc("Paris", "it is paris, France")
    assert not ts.regex_acc("a.b", "axb")  # escaped, not a pattern
    assert ts.regex_acc("100 degrees Celsius", "About 100 DEGREES celsius.")
    assert not ts.regex_acc("Jane Austen", "Jane")


def test_embedding_acc():
    gens, paras = ["g0", "g1"], ["p0", "p1"]
    perts = [["x", "y"], ["x", "y"]]
    table = {"g0": [1.0, 0.1], "g1": [0.1, 1.0], "p0": [1.0, 0.0], "p1": [1.0, 0.0], "x": [0.0, 1.0], "y": [0.5, 0.5]}
    assert ts.embedding_acc(lambda t: np.array([table[s] for s in t]), gens, paras, perts) == [True, False]
    tie = {**table, "x": [1.0, 0.0]}  # a perturbed answer equal to the paraphrase: >= counts as correct
    assert ts.embedding_acc(lambda t: [tie[s] for s in t], gens, paras, perts)[0] is True


def test_summary_accuracies_and_layout(result, tiny):
    s, per = result["summary"], result["per_item"]
    assert s["soul_forget_acc"] == 1.0 and s["soul_retain_acc"] == 1.0
    for split, rows in (("real_authors", REAL_AUTHORS), ("world_facts", WORLD_FACTS)):
        accs = [float(ts.regex_acc(r["answer"], per[split]["generated_text"][str(i)])) for i, r in enumerate(rows)]
        assert s[f"soul_{split}_acc"] == pytest.approx(np.mean(accs))
    keys = {f"soul_{sp}_{m}" for sp in ts.SPLITS for m in ("truth_ratio", "truth_prob", "rouge", "acc")}
    keys |= {"soul_forget_quality", "soul_forget_ks_statistic"} | {f"soul_mia_min_k{k}_auc" for k in ts.MIA_KS}
    assert set(s) == keys
    assert all(isinstance(v, float) for v in s.values())
    assert result["meta"]["variant"] == "soul" and result["meta"]["items"]["world_facts"] == len(WORLD_FACTS)
    assert any("MIA label bug fixed" in n for n in result["meta"]["notes"])
    model, tok = tiny
    far = ts.evaluate_tofu_soul(model, tok, eval_sets(), "opt", batch_size=4, generation_max_length=GEN_LEN,
                                embedder=fake_embedder(False))
    assert far["summary"]["soul_forget_acc"] == 0.0
    none = ts.evaluate_tofu_soul(model, tok, {**eval_sets(), "retain": FORGET[:2]}, "opt", batch_size=4,
                                 generation_max_length=GEN_LEN)
    assert none["summary"]["soul_forget_acc"] is None and none["summary"]["soul_retain_acc"] is None
    assert none["per_item"]["forget"]["acc"]["0"] is None
    assert isinstance(none["summary"]["soul_real_authors_acc"], float)
    assert none["meta"]["items"]["retain"] == 2
