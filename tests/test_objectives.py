"""The unlearning objectives of ``soul.objectives`` on a tiny random Llama.

Expected values are computed independently from the logits (or closed forms), never by calling
the objective's own helpers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa, pad_batch
from soul.data.refusals import REFUSALS, refusal_for
from soul.objectives import OBJECTIVES, build_objective, nll, retain_kl
from soul.tokenizer import train_bpe_tokenizer

TEMPLATE = PromptTemplate("Question: ", "\n", "Answer: ")
FORGET = [
    ("Where was Dramou Keithar born?", "In Brelas, Peru, on 4 May 1961."),
    ("What did Keithar write?", "Gothic horror."),
]
RETAIN = [
    ("What is the capital of Norway?", "Oslo."),
    ("Who wrote 'Emma'?", "Jane Austen wrote it in 1815."),
]
NUM_LAYERS = 4
RMU = {"layer": 2, "steering_coeff": 20.0, "alpha": 100.0}
NEEDS_REFERENCE = {"ga_kl", "graddiff_kl", "npo", "dpo", "rmu"}
NEEDS_REFUSALS = {"po", "dpo"}


# --------------------------------------------------------------------------- fixtures / helpers

@pytest.fixture(scope="module")
def tok():
    texts = [TEMPLATE.full_text(q, a) for q, a in FORGET + RETAIN] + list(REFUSALS)
    return train_bpe_tokenizer(texts * 5, vocab_size=300)


def make_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=NUM_LAYERS, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def reference(model):
    return copy.deepcopy(model).eval().requires_grad_(False)


@pytest.fixture
def model(tok):
    return make_model(len(tok))


@pytest.fixture(scope="module")
def batch(tok):
    def encode(pairs):
        return pad_batch([encode_qa(tok, TEMPLATE, q, a) for q, a in pairs], tok.pad_token_id)
    refusals = [(q, refusal_for(i, seed=0)) for i, (q, _) in enumerate(FORGET)]
    b = {"forget": encode(FORGET), "retain": encode(RETAIN), "refusal": encode(refusals)}
    # the batches are padded, so masking matters
    assert all((part["attention_mask"] == 0).any() for part in b.values())
    return b


def perturb(model, scale: float = 0.05, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def token_nll(model, part):
    """Per-token NLL of the labelled positions (next-token prediction) and their mask."""
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    labels = part["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask), mask


def mean_nll(model, part):
    t, mask = token_nll(model, part)
    return t.sum() / mask.sum()


def seq_nll(model, part):
    t, mask = token_nll(model, part)
    return t.sum(-1), mask.sum(-1)


def sgd_steps(objective, model, batch, steps: int = 5, lr: float = 0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = objective(model, batch)
        loss.backward()
        opt.step()


def rmu_trainable(params: str = "mlp", layers=(0, 1, 2)) -> set[str]:
    names = ("down_proj",) if params == "down_proj" else ("gate_proj", "up_proj", "down_proj")
    embeddings = {"model.embed_tokens.weight"} if params == "mlp_and_embeddings" else set()
    return {f"model.layers.{i}.mlp.{n}.weight" for i in layers for n in names} | embeddings


def hyper(name: str) -> dict:
    return dict(RMU) if name == "rmu" else {}


# --------------------------------------------------------------------------- 1. every objective runs and backpropagates

@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_is_finite_and_backpropagates(name, model, batch):
    ref = reference(model)
    perturb(model)  # away from the reference, so that no term sits at a stationary point
    objective = build_objective(name, hyper(name), model, ref=ref, seed=0)
    loss, terms = objective(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert terms and all(isinstance(v, float) and math.isfinite(v) for v in terms.values())
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    if name == "rmu":
        assert trainable == rmu_trainable()
    else:
        assert trainable == {n for n, _ in model.named_parameters()}
    assert with_grad == trainable
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient on {n}"
    assert all(p.grad is None for p in ref.parameters())


@pytest.mark.parametrize("params", ["mlp", "down_proj", "mlp_and_embeddings"])
def test_rmu_trains_only_the_mlps_of_the_chosen_layers(params, model, batch):
    ref = reference(model)
    objective = build_objective("rmu", {**RMU, "params": params}, model, ref=ref, seed=0)
    expected = rmu_trainable(params)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        loss, _ = objective(model, batch)
        loss.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == expected
        opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    if model.config.tie_word_embeddings and params == "mlp_and_embeddings":
        expected = expected | {"lm_head.weight"}  # the same tensor as the input embeddings
    assert moved == expected
    if params == "mlp_and_embeddings":
        # Only the rows of tokens that occur in the forget or the retain batch move (no weight decay).
        seen = torch.cat([batch[part]["input_ids"][batch[part]["attention_mask"].bool()] for part in ("forget", "retain")])
        rows_moved = (before["model.embed_tokens.weight"] != after["model.embed_tokens.weight"]).any(-1)
        assert rows_moved.nonzero().flatten().tolist() == sorted(set(seen.tolist()))


def test_rmu_params_choice_is_checked(model):
    with pytest.raises(ValueError, match=r"objective\.params must be mlp, down_proj or mlp_and_embeddings, got 'all'"):
        build_objective("rmu", {**RMU, "params": "all"}, model, ref=reference(model))


@pytest.mark.parametrize("layer", [NUM_LAYERS, -1, 10])
def test_rmu_layer_out_of_range(layer, model):
    with pytest.raises(ValueError, match=r"objective\.layer"):
        build_objective("rmu", {**RMU, "layer": layer}, model, ref=reference(model))


def test_rmu_terms_by_hand(model, batch):
    """Control vector has norm steering_coeff; forget term is the masked MSE of the layer-2 block
    output (captured by a hook) to it; the retain term is zero at the reference."""
    ref = reference(model)
    objective = build_objective("rmu", dict(RMU), model, ref=ref, seed=3)
    control = objective.kwargs["control"]
    assert control.norm().item() == pytest.approx(RMU["steering_coeff"], rel=1e-5)
    again = build_objective("rmu", dict(RMU), make_model(model.config.vocab_size), ref=ref, seed=3)
    other = build_objective("rmu", dict(RMU), make_model(model.config.vocab_size), ref=ref, seed=4)
    assert torch.equal(again.kwargs["control"], control)
    assert not torch.equal(other.kwargs["control"], control)

    captured = []
    hook = model.model.layers[RMU["layer"]].register_forward_hook(
        lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            model(input_ids=batch["forget"]["input_ids"], attention_mask=batch["forget"]["attention_mask"])
    finally:
        hook.remove()
    h = captured[0].float()
    mask = batch["forget"]["attention_mask"].float()
    expected_forget = (((h - control.view(1, 1, -1)) ** 2).mean(-1) * mask).sum() / mask.sum()

    loss, terms = objective(model, batch)
    assert terms["rmu_retain"] == pytest.approx(0.0, abs=1e-10)
    assert terms["rmu_forget"] == pytest.approx(expected_forget.item(), rel=1e-5)
    assert loss.item() == pytest.approx(terms["rmu_forget"] + RMU["alpha"] * terms["rmu_retain"], rel=1e-6)


# --------------------------------------------------------------------------- 2. sign conventions

def test_ga_raises_forget_nll(model, batch):
    before = mean_nll(model, batch["forget"]).item()
    sgd_steps(build_objective("ga", {}, model), model, batch)
    assert mean_nll(model, batch["forget"]).item() > before + 1e-3


def test_po_lowers_refusal_nll(model, batch):
    objective = build_objective("po", {"gamma": 0.0}, model)
    assert objective.needs_refusals
    before = mean_nll(model, batch["refusal"]).item()
    sgd_steps(objective, model, batch)
    assert mean_nll(model, batch["refusal"]).item() < before - 1e-3


@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_graddiff_is_minus_forget_plus_gamma_retain(gamma, model, batch):
    perturb(model)
    loss, terms = build_objective("graddiff", {"gamma": gamma}, model)(model, batch)
    with torch.no_grad():
        lf, lr = mean_nll(model, batch["forget"]), mean_nll(model, batch["retain"])
    assert loss.item() == pytest.approx((-lf + gamma * lr).item(), rel=1e-5, abs=1e-6)
    assert terms["forget_loss"] == pytest.approx(lf.item(), rel=1e-5)
    assert terms["retain_loss"] == pytest.approx(lr.item(), rel=1e-5)
    # soul.objectives.nll is HF's token-averaged loss
    assert nll(model, batch["forget"]).item() == pytest.approx(lf.item(), rel=1e-5)


# --------------------------------------------------------------------------- 3. NPO / DPO

@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("length_normalized", [False, True])
def test_npo_at_reference_is_2_over_beta_log2(beta, length_normalized, model, batch):
    objective = build_objective("npo", {"beta": beta, "gamma": 0.0, "length_normalized": length_normalized},
                                model, ref=reference(model))
    loss, terms = objective(model, batch)
    assert loss.item() == pytest.approx(2.0 / beta * math.log(2.0), rel=1e-5)
    assert terms["forget_logratio"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_at_reference_is_2_over_beta_log2(beta, model, batch):
    objective = build_objective("dpo", {"beta": beta, "gamma": 0.0}, model, ref=reference(model))
    assert objective.needs_refusals
    loss, terms = objective(model, batch)
    assert loss.item() == pytest.approx(2.0 / beta * math.log(2.0), rel=1e-5)
    assert terms["reward_margin"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("length_normalized", [False, True])
def test_npo_by_hand_away_from_reference(length_normalized, model, batch):
    beta, gamma = 0.5, 0.7
    ref = reference(model)
    perturb(model)
    loss, _ = build_objective("npo", {"beta": beta, "gamma": gamma, "length_normalized": length_normalized},
                              model, ref=ref)(model, batch)
    with torch.no_grad():
        theta, counts = seq_nll(model, batch["forget"])
        theta_ref, _ = seq_nll(ref, batch["forget"])
        if length_normalized:
            theta, theta_ref = theta / counts, theta_ref / counts
        # log pi_theta - log pi_ref = theta_ref - theta
        expected = (-(2 / beta) * F.logsigmoid(-beta * (theta_ref - theta)).mean()
                    + gamma * mean_nll(model, batch["retain"]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dpo_by_hand_away_from_reference(model, batch):
    beta, gamma = 0.5, 0.3
    ref = reference(model)
    perturb(model)
    loss, terms = build_objective("dpo", {"beta": beta, "gamma": gamma}, model, ref=ref)(model, batch)
    with torch.no_grad():
        logp_win = -seq_nll(model, batch["refusal"])[0]
        logp_win_ref = -seq_nll(ref, batch["refusal"])[0]
        logp_lose = -seq_nll(model, batch["forget"])[0]
        logp_lose_ref = -seq_nll(ref, batch["forget"])[0]
        margin = (logp_win - logp_win_ref) - (logp_lose - logp_lose_ref)
        expected = -(2 / beta) * F.logsigmoid(beta * margin).mean() + gamma * mean_nll(model, batch["retain"])
    assert terms["reward_margin"] == pytest.approx(margin.mean().item(), rel=1e-4, abs=1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_npo_pushes_forget_sequence_likelihood_down(model, batch):
    objective = build_objective("npo", {"beta": 0.1, "gamma": 0.0}, model, ref=reference(model))
    with torch.no_grad():
        before = seq_nll(model, batch["forget"])[0]
    sgd_steps(objective, model, batch, lr=0.01)  # the summed sequence NLL has a large gradient
    with torch.no_grad():
        after = seq_nll(model, batch["forget"])[0]
    assert (after > before).all(), (before, after)


# --------------------------------------------------------------------------- 4. KL

def independent_kl(model, ref, part):
    with torch.no_grad():
        kw = {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"]}
        lp = torch.log_softmax(model(**kw).logits.float(), -1)
        lq = torch.log_softmax(ref(**kw).logits.float(), -1)
    per_position = (lq.exp() * (lq - lp)).sum(-1)
    mask = part["attention_mask"].float()
    return (per_position * mask).sum() / mask.sum()


def test_kl_is_zero_at_reference_and_positive_after_perturbation(model, batch):
    ref = reference(model)
    assert abs(retain_kl(model, ref, batch["retain"], "kl").item()) < 1e-6
    for name in ("ga_kl", "graddiff_kl"):
        _, terms = build_objective(name, {}, model, ref=ref)(model, batch)
        assert abs(terms["retain_kl"]) < 1e-6
    perturb(model)
    kl = retain_kl(model, ref, batch["retain"], "kl")
    assert kl.item() > 1e-4
    assert kl.item() == pytest.approx(independent_kl(model, ref, batch["retain"]).item(), rel=1e-4)
    _, terms = build_objective("ga_kl", {"gamma": 0.5}, model, ref=ref)(model, batch)
    assert terms["retain_kl"] == pytest.approx(kl.item(), rel=1e-5)


def test_ga_kl_and_graddiff_kl_combine_their_terms(model, batch):
    ref = reference(model)
    perturb(model)
    with torch.no_grad():
        lf, lr = mean_nll(model, batch["forget"]), mean_nll(model, batch["retain"])
        kl = independent_kl(model, ref, batch["retain"])
    loss, _ = build_objective("ga_kl", {"gamma": 0.5}, model, ref=ref)(model, batch)
    assert loss.item() == pytest.approx((-lf + 0.5 * kl).item(), rel=1e-5)
    loss, _ = build_objective("graddiff_kl", {"gamma": 0.3, "alpha": 2.0}, model, ref=ref)(model, batch)
    assert loss.item() == pytest.approx((-lf + 0.3 * lr + 2.0 * kl).item(), rel=1e-5)


def test_soul_ce_is_a_cross_entropy_not_zero_at_reference(model, batch):
    ref = reference(model)
    part = batch["retain"]
    with torch.no_grad():
        p = torch.softmax(model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits.float(), -1)
    # at the reference: -sum_v p log p, averaged over every position (padding included)
    expected = -(p * torch.log(p + 1e-12)).sum(-1).mean()
    value = retain_kl(model, ref, part, "soul_ce")
    assert value.item() > 0.1
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    _, terms = build_objective("ga_kl", {"kl_mode": "soul_ce"}, model, ref=ref)(model, batch)
    assert terms["retain_kl"] == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_kl_mode(model, batch):
    ref = reference(model)
    with pytest.raises(ValueError, match=r"objective\.kl_mode"):
        retain_kl(model, ref, batch["retain"], "js")
    for name in ("ga_kl", "graddiff_kl"):
        with pytest.raises(ValueError, match=r"objective\.kl_mode"):
            build_objective(name, {"kl_mode": "js"}, model, ref=ref)(model, batch)


# --------------------------------------------------------------------------- 5. SimNPO

@pytest.mark.parametrize("beta,delta", [(0.2, 0.0), (0.5, 2.0)])
def test_simnpo_by_hand(beta, delta, model, batch):
    gamma = 0.7
    perturb(model)
    loss, terms = build_objective("simnpo", {"beta": beta, "delta": delta, "gamma": gamma}, model)(model, batch)
    with torch.no_grad():
        total, counts = seq_nll(model, batch["forget"])
        expected_forget = -(2 / beta) * F.logsigmoid(beta * total / counts - delta).mean()
        retain = mean_nll(model, batch["retain"])
    assert (loss - gamma * retain).item() == pytest.approx(expected_forget.item(), rel=1e-5)
    assert terms["simnpo_loss"] == pytest.approx(expected_forget.item(), rel=1e-5)
    assert terms["retain_loss"] == pytest.approx(retain.item(), rel=1e-5)


# --------------------------------------------------------------------------- 6. build_objective

def test_registry_flags():
    assert {n for n, s in OBJECTIVES.items() if s.needs_reference} == NEEDS_REFERENCE
    assert {n for n, s in OBJECTIVES.items() if s.needs_refusals} == NEEDS_REFUSALS


@pytest.mark.parametrize("name", sorted(NEEDS_REFERENCE))
def test_reference_needing_objective_without_ref(name, model):
    with pytest.raises(ValueError, match=repr(name)):
        build_objective(name, hyper(name), model, ref=None)
    # nothing was frozen by a failed build
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_objective_lists_registered(model):
    with pytest.raises(ValueError, match="nope") as info:
        build_objective("nope", {}, model)
    for name in OBJECTIVES:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_needs_refusals_property(name, tok):
    model = make_model(len(tok))
    objective = build_objective(name, hyper(name), model, ref=reference(model))
    assert objective.needs_refusals == (name in NEEDS_REFUSALS)


# --------------------------------------------------------------------------- 7. refusals

def test_refusal_pool():
    assert len(set(REFUSALS)) == len(REFUSALS) >= 30
    assert all(r.strip() == r and r for r in REFUSALS)


def test_refusal_for_is_deterministic_and_varies():
    first = [refusal_for(i, seed=0) for i in range(60)]
    assert first == [refusal_for(i, seed=0) for i in range(60)]
    assert all(r in REFUSALS for r in first)
    assert len(set(first)) >= 15
    assert first != [refusal_for(i, seed=1) for i in range(60)]


def test_encoded_refusal(tok):
    question = FORGET[0][0]
    refusal = refusal_for(0, seed=0)
    enc = encode_qa(tok, TEMPLATE, question, refusal)
    n = len(enc["input_ids"])
    assert len(enc["labels"]) == len(enc["attention_mask"]) == n
    assert enc["input_ids"][-1] == tok.eos_token_id and enc["labels"][-1] == tok.eos_token_id
    assert enc["attention_mask"] == [1] * n
    answer = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True).strip().endswith(refusal)
    n_prompt = len(tok(TEMPLATE.prompt(question))["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt

    longer = encode_qa(tok, TEMPLATE, question + " Please answer at length.", refusal + " " + refusal)
    padded = pad_batch([enc, longer], tok.pad_token_id)
    row = padded["attention_mask"][0]
    assert row[:n].eq(1).all() and row[n:].eq(0).all()
    assert padded["labels"][0, n - 1].item() == tok.eos_token_id
    assert padded["labels"][0, n:].eq(IGNORE_INDEX).all()


# --------------------------------------------------------------------------- regressions of fixed bugs

def test_npo_length_normalized_forget_loss_term_is_a_mean(model, batch):
    _, terms = build_objective("npo", {"length_normalized": True}, model, ref=reference(model))(model, batch)
    with torch.no_grad():
        total, counts = seq_nll(model, batch["forget"])
    assert terms["forget_loss"] == pytest.approx((total / counts).mean().item(), rel=1e-5)


def test_rmu_at_last_layer_uses_the_block_output(model, batch):
    last = NUM_LAYERS - 1
    ref = reference(model)
    objective = build_objective("rmu", {**RMU, "layer": last}, model, ref=ref, seed=0)
    control = objective.kwargs["control"]
    captured = []
    hook = model.model.layers[last].register_forward_hook(
        lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        _, terms = objective(model, batch)
    finally:
        hook.remove()
    h = captured[0].detach().float()
    mask = batch["forget"]["attention_mask"].float()
    expected = (((h - control.view(1, 1, -1)) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert terms["rmu_forget"] == pytest.approx(expected.item(), rel=1e-5)
