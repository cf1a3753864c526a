"""Objectives, optimizer parameter groups and the loop's sampling and schedule."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import REPO
from soul.objectives import OBJECTIVES, build_objective, get_objective, nll
from soul.optim import build_optimizer, param_groups
from soul.unlearn import pair_indices, total_steps


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (2, 7), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_registry_has_the_objectives_and_rejects_unknown_names():
    assert {"ga", "graddiff", "ga_kl", "graddiff_kl", "po", "npo", "simnpo", "dpo", "rmu"} <= OBJECTIVES.keys()
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        get_objective("nope")


def test_graddiff_is_minus_forget_plus_gamma_retain():
    model, f, r = tiny_model(), batch(1), batch(2)
    loss, terms = build_objective("graddiff", {"gamma": 0.3}, model)(model, {"forget": f, "retain": r})
    expected = -nll(model, f) + 0.3 * nll(model, r)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["forget_loss"] == pytest.approx(nll(model, f).item(), rel=1e-6)
    assert terms["retain_loss"] == pytest.approx(nll(model, r).item(), rel=1e-6)


def test_ga_ignores_retain_and_ascends():
    model, f = tiny_model(), batch(1)
    loss, terms = build_objective("ga", {}, model)(model, {"forget": f, "retain": batch(2)})
    assert loss.item() == pytest.approx(-terms["forget_loss"])
    loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = nll(model, f).item()
    opt.step()
    assert nll(model, f).item() > before


def test_param_groups_skip_decay_on_norms_and_biases():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # With only matrices trainable (as RMU leaves it) there is no empty second group, which DeepSpeed
    # would drop from under the learning-rate schedule.
    for p in model.parameters():
        p.requires_grad_(p.ndim >= 2)
    (only,) = param_groups(model, 0.1)
    assert only["weight_decay"] == 0.1 and len(only["params"]) == sum(p.ndim >= 2 for p in model.parameters())


def test_build_optimizer_passes_config_and_rejects_unknown():
    model = tiny_model()
    opt, hook = build_optimizer(OmegaConf.create({"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.95],
                                                  "eps": 1e-8, "weight_decay": 0.1}), model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95) and hook is None
    opt, hook = build_optimizer(OmegaConf.create({"name": "sophia", "lr": 1e-3, "estimator": "gnb", "interval": 5,
                                                  "weight_decay": 0.1}), model)
    assert opt.bs_from_tokens and hook.estimator == "gnb" and hook.interval == 5
    opt, hook = build_optimizer(OmegaConf.create({"name": "soul_ref", "lr": 1e-3, "bs": 5120, "estimator": "in_step",
                                                  "hessian_in_step": True, "double_momentum": True}), model)
    assert hook is None and opt.bs == 5120 and not opt.bs_from_tokens and opt.double_momentum
    with pytest.raises(ValueError, match="optim=adamw"):
        build_optimizer(OmegaConf.create({"name": "adamw", "lr": 1e-3, "rho": 0.1}), model)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        build_optimizer(OmegaConf.create({"name": "lion", "lr": 1e-3}), model)
    # Sophia-H's curvature is u * (H u) itself: B (the token count) would scale it by hundreds.
    opt, hook = build_optimizer(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "optim" / "sophia_h.yaml"),
                                                {"lr": 1e-3}), model)
    assert hook.estimator == "hutchinson" and opt.bs == 1 and not opt.bs_from_tokens
    with pytest.raises(ValueError, match=r"optim=sophia_h: bs=tokens .* use optim.bs=1"):
        build_optimizer(OmegaConf.create({"name": "sophia_h", "lr": 1e-3, "bs": "tokens", "estimator": "hutchinson"}),
                        model)


def test_pairs_cover_the_forget_set_each_epoch_and_differ_by_rank():
    it = pair_indices(10, 100, batch_size=4, seed=0)
    epoch = [next(it) for _ in range(3)]
    assert sorted(i for f, _ in epoch for i in f) == list(range(10))
    assert all(len(f) == len(r) for f, r in epoch)
    again = pair_indices(10, 100, batch_size=4, seed=0)
    assert [next(again) for _ in range(3)] == epoch
    other_rank = pair_indices(10, 100, batch_size=4, seed=0, rank=1)
    assert [next(other_rank) for _ in range(3)] != epoch


def test_total_steps_follows_epochs_and_effective_batch():
    cfg = OmegaConf.create({"max_steps": None, "epochs": 5, "batch_size": 1, "grad_accum": 4})
    assert total_steps(400, cfg) == 500  # SOUL's TOFU forget10 setting
    assert total_steps(400, cfg, world_size=2) == 250
    cfg.max_steps = 7
    assert total_steps(400, cfg) == 7


def test_unknown_objective_setting_is_named():
    with pytest.raises(ValueError, match=r"objective=graddiff does not take \['gammma'\]"):
        build_objective("graddiff", {"gammma": 0.3}, tiny_model())
