"""TOFU statistics as SOUL's own evaluation computes them (``eval.tofu.variant=soul``).

A re-implementation of ``eval_tofu`` in SOUL's ``src/metrics/Tofu.py`` and ``metrics/MIA.py``
(github.com/OPTML-Group/SOUL; the project's reference pins 30f7a41, this was checked against the
file at 58a7df6, the final commit), so SOUL's TOFU tables can be reproduced.
These are *not* TOFU's definitions (see ``soul.eval.tofu`` for those). What SOUL computes, per
split (forget = ``forget10_perturbed``, retain = ``retain_perturbed``, ``real_authors_perturbed``,
``world_facts_perturbed``; **all** rows, no cap at 300):

* ``P(a|q)`` (SOUL's ``compute_prob``) = exp(-summed answer NLL / #answer tokens) of the SOUL
  template text ``question_start + q + question_end + answer_tag + a``, **no EOS label**. The
  answer tokens are the positions of the full text after the first ``n_q`` ones, where
  ``n_q = len(tokenizer.tokenize(prompt, add_special_tokens=True))``. SOUL loads its tokenizer
  with ``use_fast=False``, and a slow tokenizer's ``tokenize`` never adds BOS whatever the flag,
  so ``n_q`` excludes the BOS that the full text's ``input_ids`` carry: the **last prompt token
  is scored as an answer token** (for Llama the ``]`` of ``[\\INST]``). ``emulate_fast_tokenizer``
  switches to what the same code does with a fast tokenizer (``n_q`` counts BOS, so exactly the
  answer tokens are scored).
* truth ratio (forget/retain) = **arithmetic** mean_k P(pert_k | para_q) / (P(para_a | para_q) +
  1e-12), prompt = ``paraphrased_question``; (real authors / world facts) = mean_k P(pert_k | q) /
  (P(a | q) + 1e-12). SOUL reports the mean of the raw ratios (no min(R, 1/R) or 1 - R).
* ``truth_prob`` = P(answer | question).
* ``rouge`` = ROUGE-L **recall** (rouge-score, ``use_stemmer=True``) of the answer against a greedy
  generation from the original question, total length 200 (prompt included), generated from the
  prompt *without* the answer tag, decoded as ``outputs[0, n_q + 1:]`` with the same ``n_q``.
  With a slow tokenizer that prepends BOS, ``n_q + 1`` is exactly the prompt length, so nothing
  is dropped. The "one extra token dropped" reading of that slice holds only where ``n_q`` counts
  BOS (a fast tokenizer: ``emulate_fast_tokenizer=True``) or the tokenizer adds no BOS; then the
  first generated token is lost. The slice is reproduced literally for whichever case applies.
* ``acc`` (real authors / world facts): correct iff ``re.search(re.escape(answer), generation,
  re.IGNORECASE)`` on that generation (after SOUL's ``.replace("[pad]", "")``).
  ``acc`` (forget / retain): a greedy generation from the *paraphrased* question is embedded with
  ``SentenceTransformer("paraphrase-MiniLM-L6-v2")``; correct iff its cosine similarity to the
  paraphrased answer is >= its similarity to every perturbed answer. Here this needs an
  ``embedder`` callable (list[str] -> 2-D embeddings); without one (offline) it is ``None``.
* "Forget Quality" = ``scipy.stats.ks_2samp(forget TRs, retain TRs).pvalue``, both from the
  *same* model; no retain-only oracle is involved (unlike TOFU's forget quality).
* MIA = ROC-AUC of Min-K% Prob (K = 10..60) on the templated ``question + answer`` texts (no EOS),
  every token after the first (BOS) scored. Per item ``s = -mean(lowest K% token log-probs)``
  (SOUL's score: higher means *less* member-like). Members are the forget rows, non-members the
  real-authors + world-facts rows. **SOUL's label bug is fixed**: SOUL orders the data
  ``concat(forget, test)`` but the labels ``[0]*len(test) + [1]*len(forget)``. Here the labels are
  aligned with the rows, members 1 and non-members 0, and the AUC ranks by member-likeness ``-s``:
  AUC = P(a forget item looks more "seen" than a non-member), 1.0 = the forget set is perfectly
  identified as trained on (not unlearned), 0.5 = indistinguishable. This is the same number as
  open-unlearning's ``mia_min_k`` AUC and ``soul.eval.mia.auc``. SOUL's misaligned value is kept
  in ``meta["mia_auc_soul_misaligned_labels"]`` for comparison with its published numbers.

SOUL scores one example at a time in fp16; here every forward pass is batched (sorted by
length, right padding for scoring, left padding for generation), which changes nothing but
floating-point noise. Batched generation uses ``max_new_tokens = 200 - shortest prompt`` and then
cuts every row to ``200 - its own prompt length`` tokens and at its first EOS, so each row equals
SOUL's one-at-a-time ``generate(max_length=200)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

from soul.data.qa import IGNORE_INDEX, PromptTemplate, pad_batch
from soul.eval.mia import roc_auc

__all__ = [
    "SPLITS", "MIA_KS", "TR_EPS", "soul_template", "token_logprobs", "soul_masked_positions", "soul_prob",
    "soul_probs", "truth_ratio", "generate_soul_ids", "generate_soul", "regex_acc", "embedding_acc",
    "min_k_score", "roc_auc", "mia_auc", "soul_misaligned_auc", "evaluate_tofu_soul",
]

SPLITS = ("forget", "retain", "real_authors", "world_facts")
PARAPHRASED_SPLITS = ("forget", "retain")  # have paraphrased_question / paraphrased_answer
MIA_SPLITS = ("forget", "real_authors", "world_facts")
MIA_KS = (10, 20, 30, 40, 50, 60)
TR_EPS = 1e-12

Embedder = Callable[[list[str]], object]


def soul_template(family: str) -> PromptTemplate:
    """SOUL's prompt template (``compute_prob`` / ``generate_answer`` / ``MIA`` in ``Tofu.py``).

    ``family`` containing "llama" (case-insensitive; SOUL tests ``"llama" in model_name``) gives
    ``"[INST] " + q + " [\\INST]" + " " + a``: the closing tag has a literal **backslash**, a typo
    in SOUL (commit c70759f changed it to ``[/INST]``, the final commit reverted it), and a space
    before the answer. TOFU fine-tuned ``tofu_ft_llama2-7b`` with ``"[INST] " + q + " [/INST]" + a``
    (forward slash, no space), so SOUL's template is not the one the model was trained on.
    Anything else gives ``"### Question: " + q + "\\n" + "### Answer: " + a``.
    """
    if "llama" in family.lower():
        return PromptTemplate(question_start="[INST] ", question_end=" [\\INST]", answer_tag=" ")
    return PromptTemplate(question_start="### Question: ", question_end="\n", answer_tag="### Answer: ")


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _soul_prompt_count(tokenizer, prompt: str, emulate_fast_tokenizer: bool) -> int:
    """SOUL's ``len(tokenizer.tokenize(prompt, add_special_tokens=True))``.

    A slow tokenizer (SOUL's ``use_fast=False``) ignores the flag and counts no special tokens;
    a fast one counts them (BOS)."""
    return len(tokenizer(prompt, add_special_tokens=emulate_fast_tokenizer)["input_ids"])


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
    """Per text, log p(x_t | x_<t) of every token after the first (float32, CPU).

    The text is tokenized with special tokens (BOS first when the tokenizer adds one, no EOS),
    as SOUL's ``tokenizer(full_text)`` / ``tokenizer.encode(text)``. Batched, sorted by length,
    right padded."""
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_batch([{"input_ids": encoded[i], "labels": encoded[i], "attention_mask": [1] * len(encoded[i])}
                           for i in idx], _pad_id(tokenizer))
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                              reduction="none")
        for row, i in enumerate(idx):
            out[i] = (-nll[row, :max(len(encoded[i]) - 1, 0)]).cpu()
    return out


def soul_masked_positions(tokenizer, template: PromptTemplate, question: str,
                       emulate_fast_tokenizer: bool = False) -> int:
    """How many leading positions of the full text SOUL masks out of its labels (``n_q``)."""
    return _soul_prompt_count(tokenizer, template.prompt(question), emulate_fast_tokenizer)


def soul_prob(logprobs: torch.Tensor, n_masked: int) -> float:
    """SOUL's length-normalised probability from a text's token log-probs (``token_logprobs``).

    Labels are the input ids with the first ``n_masked`` positions set to -100, shifted by one
    as in ``get_batch_loss``; ``logprobs[j]`` belongs to position ``j + 1``."""
    answer = logprobs[max(n_masked - 1, 0):].double()
    if answer.numel() == 0:
        return math.nan
    return math.exp(float(answer.mean()))


def soul_probs(model, tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
               emulate_fast_tokenizer: bool = False) -> list[float]:
    """SOUL's ``compute_prob`` for each (question, answer) pair, batched."""
    lps = token_logprobs(model, tokenizer, [template.full_text(q, a) for q, a in pairs], batch_size)
    return [soul_prob(lp, soul_masked_positions(tokenizer, template, q, emulate_fast_tokenizer))
            for lp, (q, _) in zip(lps, pairs)]


def truth_ratio(perturbed_probs: Sequence[float], true_prob: float) -> float:
    """SOUL's truth ratio: arithmetic mean of the perturbed probabilities over the true one."""
    return sum(perturbed_probs) / len(perturbed_probs) / (true_prob + TR_EPS)


@torch.no_grad()
def generate_soul_ids(model, tokenizer, template: PromptTemplate, questions: Sequence[str], batch_size: int = 32,
                      max_length: int = 200, emulate_fast_tokenizer: bool = False) -> list[list[int]]:
    """The token ids SOUL's ``generate_answer`` decodes, per question.

    SOUL generates greedily from ``question_start + q + question_end`` (no answer tag) with
    ``max_length`` tokens in all, and decodes ``outputs[0, n_q + 1:]``, ``n_q`` as in
    :func:`soul_masked_positions`. Here: left-padded batches sorted by length; each row is cut to
    its own ``max_length`` budget and after its first EOS, so it equals the unbatched output."""
    device = next(model.parameters()).device
    prompts = [template.prompt(q) for q in questions]
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    starts = [_soul_prompt_count(tokenizer, p, emulate_fast_tokenizer) + 1 for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    eos = tokenizer.eos_token_id
    results: list[list[int]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_batch([{"input_ids": encoded[i], "labels": encoded[i], "attention_mask": [1] * len(encoded[i])}
                           for i in idx], _pad_id(tokenizer), padding_side="left")
        width = batch["input_ids"].shape[1]
        new_tokens = max_length - min(len(encoded[i]) for i in idx)
        if new_tokens > 0:
            out = model.generate(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].to(device),
                                 max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=_pad_id(tokenizer), eos_token_id=eos)[:, width:].tolist()
        else:
            out = [[] for _ in idx]
        for row, i in enumerate(idx):
            generated = out[row][:max(max_length - len(encoded[i]), 0)]
            if eos in generated:
                generated = generated[:generated.index(eos) + 1]
            results[i] = (encoded[i] + generated)[starts[i]:]
    return results


def generate_soul(model, tokenizer, template: PromptTemplate, questions: Sequence[str], batch_size: int = 32,
                  max_length: int = 200, emulate_fast_tokenizer: bool = False) -> list[str]:
    """SOUL's ``generate_answer`` texts: :func:`generate_soul_ids` decoded with special tokens skipped
    (not stripped, as in SOUL)."""
    ids = generate_soul_ids(model, tokenizer, template, questions, batch_size, max_length, emulate_fast_tokenizer)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in ids]


def regex_acc(answer: str, generation: str) -> bool:
    """SOUL's real-authors / world-facts accuracy: the answer occurs in the generation (any case)."""
    return re.search(re.escape(answer), generation, re.IGNORECASE) is not None


def _as_matrix(embeddings) -> torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        return embeddings.detach().float().cpu()
    return torch.as_tensor(np.asarray(embeddings, dtype=np.float32))


def embedding_acc(embedder: Embedder, generations: Sequence[str], paraphrased_answers: Sequence[str],
                  perturbed_answers: Sequence[Sequence[str]]) -> list[bool]:
    """SOUL's forget/retain accuracy: the generation's cosine similarity to the paraphrased answer
    is >= its similarity to each perturbed answer (``max(scores) == scores[0]``)."""
    n = len(generations)
    flat = [p for options in perturbed_answers for p in options]
    emb = F.normalize(_as_matrix(embedder(list(generations) + list(paraphrased_answers) + flat)), dim=-1)
    if emb.ndim != 2 or emb.shape[0] != 2 * n + len(flat):
        raise ValueError(f"embedder returned shape {tuple(emb.shape)} for {2 * n + len(flat)} texts")
    result, offset = [], 2 * n
    for i, options in enumerate(perturbed_answers):
        candidates = torch.cat([emb[n + i:n + i + 1], emb[offset:offset + len(options)]])
        offset += len(options)
        sims = candidates @ emb[i]
        result.append(bool(sims[0] >= sims.max()))
    return result


def min_k_score(logprobs: Sequence[float] | torch.Tensor, k: int) -> float:
    """SOUL's Min-K% Prob score: -mean of the ``int(n * k/100)`` lowest token log-probs (>= 1 kept;
    SOUL would average an empty slice to NaN on texts under 100/k tokens)."""
    values = np.sort(np.asarray(logprobs.tolist() if isinstance(logprobs, torch.Tensor) else logprobs, float))
    n = max(int(len(values) * (k / 100)), 1)
    return float(-np.mean(values[:n]))


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float | None:
    """The fixed MIA AUC from SOUL-oriented scores (higher = less member-like): members labelled 1,
    non-members 0, ranked by member-likeness ``-score``. 1.0 = members perfectly look "seen"."""
    labels = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return roc_auc(labels, [-float(s) for s in list(member_scores) + list(nonmember_scores)])


def soul_misaligned_auc(forget_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float | None:
    """SOUL's published (buggy) MIA AUC: rows ``concat(forget, non-members)``, labels
    ``[0]*len(non-members) + [1]*len(forget)``, predictions the raw scores."""
    labels = [0] * len(nonmember_scores) + [1] * len(forget_scores)
    return roc_auc(labels, list(forget_scores) + list(nonmember_scores))


def _rows(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate_tofu_soul(model, tokenizer, eval_sets: dict, family: str, batch_size: int = 32,
                       generation_max_length: int = 200, embedder: Embedder | None = None,
                       emulate_fast_tokenizer: bool = False, generation_batch_size: int | None = None) -> dict:
    """SOUL's TOFU evaluation of a live model (all rows of every split); see the module docstring.

    ``eval_sets`` maps forget / retain / real_authors / world_facts to HF datasets or lists of
    row dicts with TOFU's ``*_perturbed`` columns. ``family`` picks :func:`soul_template`.
    ``embedder`` (list[str] -> 2-D embeddings, e.g. ``SentenceTransformer("paraphrase-MiniLM-L6-v2")
    .encode``) enables forget/retain ``acc``; without it those are None.
    ``emulate_fast_tokenizer`` reproduces SOUL's code run with a fast tokenizer instead of its
    slow one (see the module docstring). Returns ``{"per_item": {split: {field: {idx: value}}},
    "summary": {...}, "meta": {...}}``; the MIA AUC orients members (forget) = 1, non-members
    (real authors + world facts) = 0, AUC 1.0 = forget set fully recognised as seen.
    """
    was_training = model.training
    model.eval()
    template = soul_template(family)
    rows = {s: _rows(eval_sets[s]) for s in SPLITS}

    # -- every probability and every MIA score from one batched scoring pass -----------------
    pairs: dict[tuple[str, str], None] = {}
    for s in SPLITS:
        for r in rows[s]:
            pairs[(r["question"], r["answer"])] = None
            prompt = r["paraphrased_question"] if s in PARAPHRASED_SPLITS else r["question"]
            if s in PARAPHRASED_SPLITS:
                pairs[(prompt, r["paraphrased_answer"])] = None
            for p in r["perturbed_answer"]:
                pairs[(prompt, p)] = None
    pair_list = list(pairs)
    texts = list(dict.fromkeys(template.full_text(q, a) for q, a in pair_list))
    lp_by_text = dict(zip(texts, token_logprobs(model, tokenizer, texts, batch_size)))
    counts: dict[str, int] = {}

    def prob(q: str, a: str) -> float:
        if q not in counts:
            counts[q] = soul_masked_positions(tokenizer, template, q, emulate_fast_tokenizer)
        return soul_prob(lp_by_text[template.full_text(q, a)], counts[q])

    # -- generations: original questions (ROUGE, regex acc), paraphrased ones (embedding acc) --
    questions = [r["question"] for s in SPLITS for r in rows[s]]
    if embedder is not None:
        questions += [r["paraphrased_question"] for s in PARAPHRASED_SPLITS for r in rows[s]]
    questions = list(dict.fromkeys(questions))
    gen = dict(zip(questions, generate_soul(model, tokenizer, template, questions, generation_batch_size or batch_size,
                                            generation_max_length, emulate_fast_tokenizer)))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    per_item: dict[str, dict[str, dict[str, object]]] = {}
    summary: dict[str, float | None] = {}
    truth_ratios: dict[str, list[float]] = {}
    for s in SPLITS:
        log: dict[str, dict[str, object]] = {}

        def put(field: str, i: int, value) -> None:
            log.setdefault(field, {})[str(i)] = value

        paraphrased = s in PARAPHRASED_SPLITS
        accs: list[float | None] = []
        if paraphrased and embedder is not None and rows[s]:
            para_gens = [gen[r["paraphrased_question"]].replace("[pad]", "").replace("<pad>", "") for r in rows[s]]
            emb_acc = embedding_acc(embedder, para_gens, [r["paraphrased_answer"] for r in rows[s]],
                                    [r["perturbed_answer"] for r in rows[s]])
        for i, r in enumerate(rows[s]):
            prompt = r["paraphrased_question"] if paraphrased else r["question"]
            pert = [prob(prompt, p) for p in r["perturbed_answer"]]
            true_prob = prob(r["question"], r["answer"])
            base = prob(prompt, r["paraphrased_answer"]) if paraphrased else true_prob
            tr = truth_ratio(pert, base)
            text = gen[r["question"]]
            if paraphrased:
                put("paraphrased_prob", i, base)
                if embedder is not None:
                    put("paraphrased_generated_text", i, para_gens[i])
                acc = float(emb_acc[i]) if embedder is not None else None
            else:
                text = text.replace("[pad]", "")
                acc = float(regex_acc(r["answer"], text))
            put("perturbed_prob", i, pert)
            put("truth_ratio", i, tr)
            put("truth_prob", i, true_prob)
            put("generated_text", i, text)
            put("rougeL_recall", i, scorer.score(r["answer"], text)["rougeL"].recall)
            put("acc", i, acc)
            accs.append(acc)
            if s in MIA_SPLITS:
                lp = lp_by_text[template.full_text(r["question"], r["answer"])]
                for k in MIA_KS:
                    put(f"mia_min_k{k}", i, min_k_score(lp, k))
        per_item[s] = log
        truth_ratios[s] = list(log.get("truth_ratio", {}).values())
        summary[f"soul_{s}_truth_ratio"] = _mean(truth_ratios[s])
        summary[f"soul_{s}_truth_prob"] = _mean(log.get("truth_prob", {}).values())
        summary[f"soul_{s}_rouge"] = _mean(log.get("rougeL_recall", {}).values())
        summary[f"soul_{s}_acc"] = _mean(accs) if accs and all(a is not None for a in accs) else None

    if truth_ratios["forget"] and truth_ratios["retain"]:
        ks = ks_2samp(truth_ratios["forget"], truth_ratios["retain"])
        summary["soul_forget_quality"] = float(ks.pvalue)
        summary["soul_forget_ks_statistic"] = float(ks.statistic)
    else:
        summary["soul_forget_quality"] = summary["soul_forget_ks_statistic"] = None

    misaligned = {}
    for k in MIA_KS:
        members = list(per_item["forget"].get(f"mia_min_k{k}", {}).values())
        others = [v for s in ("real_authors", "world_facts") for v in per_item[s].get(f"mia_min_k{k}", {}).values()]
        summary[f"soul_mia_min_k{k}_auc"] = mia_auc(members, others)
        misaligned[f"min_k{k}"] = soul_misaligned_auc(members, others)

    if was_training:
        model.train()
    notes = [
        "SOUL's template: Llama uses '[INST] q [\\INST] a' (literal backslash typo, extra space before the "
        "answer); TOFU fine-tuned with '[INST] q [/INST]a'." if "llama" in family.lower() else
        "SOUL's non-Llama template: '### Question: q\\n### Answer: a'.",
        "P(a|q) = exp(-summed NLL / #answer tokens), no EOS label; the first n_q positions are masked with "
        "n_q = len(tokenizer.tokenize(prompt)) " + ("counting BOS (fast-tokenizer emulation)." if emulate_fast_tokenizer
                                                    else "without BOS (SOUL's slow tokenizer), so the last prompt "
                                                    "token is scored as an answer token."),
        "Truth ratio = arithmetic mean of perturbed P over P(paraphrased answer | paraphrased question) + 1e-12 "
        "(forget/retain) or over P(answer | question) + 1e-12 (real authors/world facts); the raw mean is reported.",
        "Forget quality = KS-test p-value of forget vs retain truth ratios of the same model (no retain oracle).",
        "Generations: greedy, max_length %d in all, from the prompt without answer tag, decoded as "
        "outputs[n_q + 1:] (%s)." % (generation_max_length, "drops the first generated token when n_q counts BOS"
                                     if emulate_fast_tokenizer else
                                     "with a BOS-prepending tokenizer this is exactly the generated tokens"),
        "All rows of every split are used (no 300-item cap).",
        "Forget/retain acc needs a sentence embedder (SOUL: paraphrase-MiniLM-L6-v2)"
        + ("." if embedder is not None else "; none was given, so it is None."),
        "MIA label bug fixed: SOUL labels concat(forget, test) rows as [0]*len(test)+[1]*len(forget); here "
        "members (forget) = 1, non-members (real authors + world facts) = 0, ranked by member-likeness "
        "(mean of the lowest K% log-probs), so AUC 1.0 = forget set fully recognised. SOUL's misaligned values "
        "are in meta.mia_auc_soul_misaligned_labels.",
        "Batched forward passes (SOUL: one example at a time, fp16): only floating-point differences.",
    ]
    meta = {"variant": "soul", "notes": notes, "template": asdict(template), "family": family,
            "items": {s: len(rows[s]) for s in SPLITS}, "generation_max_length": generation_max_length,
            "emulate_fast_tokenizer": emulate_fast_tokenizer, "embedder": embedder is not None,
            "mia_orientation": "members (forget) labelled 1, non-members (real_authors + world_facts) 0; "
                               "score -s with s = -mean(lowest K% log-probs)",
            "mia_auc_soul_misaligned_labels": misaligned}
    return {"per_item": per_item, "summary": summary, "meta": meta}
