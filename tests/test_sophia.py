"""The mathematics of soul's optimizers: SophiaG and its SOUL switches, the curvature passes,
sign-momentum and influence unlearning."""

from __future__ import annotations

import math

import pytest
import torch

from soul.optim import CurvatureHook, InfluenceUnlearning, SignSGD, SophiaG


def published_sophiag_trajectory(theta0, grads, hessian_grads, k, lr, betas, rho, wd, bs):
    """The published SophiaG (github.com/Liuhong99/Sophia, _single_tensor_sophiag and
    update_hessian), written out per tensor as the reference the foreach version must match."""
    theta = theta0.clone()
    m = torch.zeros_like(theta)
    h = torch.zeros_like(theta)
    out = []
    for t, g in enumerate(grads):
        theta.mul_(1 - lr * wd)
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        ratio = (m.abs() / (rho * bs * h + 1e-15)).clamp(None, 1)
        theta.addcmul_(m.sign(), ratio, value=-lr)
        if t % k == k - 1:
            hg = hessian_grads[t]
            h.mul_(betas[1]).addcmul_(hg, hg, value=1 - betas[1])
        out.append(theta.clone())
    return out


def make_param(values):
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    return p


def set_grad(p, values):
    p.grad = torch.as_tensor(values, dtype=p.dtype).clone()


def test_zero_curvature_step_is_minus_lr_sign_of_momentum_plus_decay():
    p = make_param([0.5, -2.0, 3.0, 0.0])
    opt = SophiaG([p], lr=0.1, betas=(0.9, 0.99), rho=0.04, weight_decay=0.2)
    theta0 = p.detach().clone()
    g = torch.tensor([1e-6, -3.0, 0.2, -1e-9])
    set_grad(p, g)
    opt.step(bs=100)
    m = 0.1 * g
    expected = theta0 * (1 - 0.1 * 0.2) - 0.1 * torch.sign(m)
    assert torch.allclose(p.detach(), expected, atol=1e-7)


def test_large_curvature_step_is_unclipped_newton_like():
    p = make_param([1.0, -1.0, 2.0])
    opt = SophiaG([p], lr=0.05, betas=(0.5, 0.0), rho=0.1, weight_decay=0.0)
    h_grad = torch.tensor([30.0, 50.0, 40.0])
    set_grad(p, h_grad)
    opt.update_hessian()  # beta2 = 0: h = h_grad^2
    theta0 = p.detach().clone()
    g = torch.tensor([0.3, -0.2, 0.1])
    set_grad(p, g)
    opt.step(bs=10)
    m = 0.5 * g
    h = h_grad**2
    assert ((m.abs() / (0.1 * 10 * h)) < 1).all()  # really unclipped
    assert torch.allclose(p.detach(), theta0 - 0.05 * m / (0.1 * 10 * h), rtol=1e-6)


def test_update_hessian_is_an_ema_of_squared_gradients_and_step_leaves_it():
    p = make_param([0.0, 0.0])
    opt = SophiaG([p], lr=0.1, betas=(0.9, 0.95))
    h = torch.zeros(2)
    for g in ([1.0, -2.0], [0.5, 4.0], [-3.0, 0.1]):
        set_grad(p, g)
        opt.update_hessian()
        h = 0.95 * h + 0.05 * torch.tensor(g) ** 2
        assert torch.allclose(opt.state[p]["hessian"], h)
    before = opt.state[p]["hessian"].clone()
    opt.step()
    assert torch.equal(opt.state[p]["hessian"], before)


def test_soul_ref_applies_momentum_twice_and_curvature_every_step():
    p = make_param([0.0, 0.0, 0.0])
    opt = SophiaG([p], lr=1e-3, betas=(0.9, 0.95), rho=0.04, weight_decay=0.0,
                  hessian_in_step=True, double_momentum=True)
    g1 = torch.tensor([1.0, -0.5, 2.0])
    set_grad(p, g1)
    opt.step()
    assert torch.allclose(opt.state[p]["exp_avg"], 0.19 * g1, atol=1e-7)
    assert torch.allclose(opt.state[p]["hessian"], 0.05 * g1**2, atol=1e-7)
    m1 = opt.state[p]["exp_avg"].clone()
    g2 = torch.tensor([-1.0, 0.25, 0.5])
    set_grad(p, g2)
    opt.step()
    assert torch.allclose(opt.state[p]["exp_avg"], 0.81 * m1 + 0.19 * g2, atol=1e-7)
    assert torch.allclose(opt.state[p]["hessian"], 0.95 * 0.05 * g1**2 + 0.05 * g2**2, atol=1e-7)


def test_soul_ref_first_step_clips_almost_every_coordinate_at_llm_gradient_scale():
    # SOUL's analysis: with bs = 5120 and rho = 0.04 only |g| > ~0.0186 escapes the clip on step 1.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(10_000))
    opt = SophiaG([p], lr=1e-5, betas=(0.9, 0.95), rho=0.04, weight_decay=0.0,
                  hessian_in_step=True, double_momentum=True)
    p.grad = torch.randn(10_000) * 1e-3
    opt.step()
    assert opt.diagnostics()["clip_fraction"] == 1.0
    assert opt.diagnostics()["mean_update_over_lr"] == pytest.approx(1.0)


def test_one_step_on_a_quadratic_with_its_exact_diagonal_hessian_is_a_newton_step():
    a = torch.tensor([2.0, 5.0, 0.5, 10.0])  # f = 0.5 * sum a x^2 - b x, minimum at b / a
    b = torch.tensor([1.0, -2.0, 0.3, 4.0])
    p = make_param([0.6, -0.3, 0.8, 0.5])
    opt = SophiaG([p], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
    set_grad(p, a.sqrt())
    opt.update_hessian()  # h = a exactly
    g = a * p.detach() - b
    assert ((g / a).abs() < 1).all()  # no clipping
    set_grad(p, g)
    opt.step(bs=1)
    newton = p.detach()
    assert torch.allclose(newton, b / a, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_foreach_sophia_matches_the_published_trajectory(k):
    torch.manual_seed(k)
    theta0 = torch.randn(64)
    grads = [torch.randn(64) * 0.1 for _ in range(25)]
    hgrads = [torch.randn(64) * 0.05 for _ in range(25)]
    kw = dict(lr=1e-2, betas=(0.965, 0.99), rho=0.04, wd=0.1, bs=480)
    reference = published_sophiag_trajectory(theta0, grads, hgrads, k, **kw)
    p = torch.nn.Parameter(theta0.clone())
    opt = SophiaG([p], lr=kw["lr"], betas=kw["betas"], rho=kw["rho"], weight_decay=kw["wd"])
    for t, g in enumerate(grads):
        p.grad = g.clone()
        opt.step(bs=kw["bs"])
        if t % k == k - 1:
            p.grad = hgrads[t].clone()
            opt.update_hessian()
        assert torch.equal(p.detach(), reference[t]), f"diverged at step {t}"


def test_state_dict_round_trip_continues_the_same_trajectory():
    torch.manual_seed(0)
    grads = [torch.randn(8) for _ in range(6)]

    def run(split: int | None):
        p = torch.nn.Parameter(torch.ones(8))
        opt = SophiaG([p], lr=0.01, hessian_in_step=True, double_momentum=True)
        for t, g in enumerate(grads):
            if t == split:
                saved = opt.state_dict()
                p = torch.nn.Parameter(p.detach().clone())
                opt = SophiaG([p], lr=0.01, hessian_in_step=True, double_momentum=True)
                opt.load_state_dict(saved)
            p.grad = g.clone()
            opt.step()
        return p.detach()

    assert torch.equal(run(None), run(3))


def test_negative_curvature_is_clipped_to_the_sign_step_when_asked():
    p = make_param([0.0, 0.0])
    opt = SophiaG([p], lr=0.1, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0, clamp_negative_curvature=True)
    opt.state[p]  # create state through a first update
    set_grad(p, [1.0, 1.0])
    opt.update_hessian()
    opt.state[p]["hessian"].copy_(torch.tensor([-5.0, 4.0]))
    set_grad(p, [0.5, 0.5])
    opt.step(bs=1)
    # negative h -> denominator eps -> full sign step; positive h -> 0.5 / 4
    assert torch.allclose(p.detach(), torch.tensor([-0.1, -0.1 * 0.5 / 4.0]))


def test_invalid_hyperparameters_are_named():
    p = make_param([0.0])
    with pytest.raises(ValueError, match="betas"):
        SophiaG([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="rho"):
        SophiaG([p], rho=-1)


class Quadratic(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.theta = torch.nn.Parameter(torch.ones_like(a))


def quadratic_objective(model, batch):
    return 0.5 * (model.a * model.theta**2).sum(), {}


def test_hutchinson_with_rademacher_probes_recovers_a_diagonal_hessian_exactly():
    """u * (H u) = diag(H) for a diagonal H and u in {-1, 1}: the EMA takes the estimate as it is
    (Sophia-H), not its square, so a negative curvature stays negative until the step clamps it."""
    a = torch.tensor([3.0, 0.5, -7.0])
    model = Quadratic(a)
    opt = SophiaG(model.parameters(), betas=(0.9, 0.5), bs=1, clamp_negative_curvature=True)
    hook = CurvatureHook("hutchinson", interval=1, probe="rademacher", seed=0)
    hook.run(model, opt, {}, quadratic_objective, max_grad_norm=None)
    assert torch.allclose(opt.state[model.theta]["hessian"], 0.5 * a)  # (1 - beta2) * a
    hook.run(model, opt, {}, quadratic_objective, max_grad_norm=None)
    assert torch.allclose(opt.state[model.theta]["hessian"], 0.75 * a)  # an EMA of the exact estimates
    assert model.theta.grad is None
    # The step divides by max(rho * bs * h, eps): the negative coordinate's clamped h = 0 clips it to lr.
    model.theta.grad = a * model.theta.detach()  # the quadratic's gradient at theta = 1
    opt.step()
    lr, decay = 1e-4, 0.1
    # m = -0.7 over the clamped h + eps: clipped to -1, a full lr step up (after the decay); an
    # unclamped h = -5.25 would have sent it down.
    assert float(model.theta.detach()[2]) == pytest.approx(1 - lr * decay + lr, rel=1e-7)


def tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))


def lm_batch():
    ids = torch.randint(3, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_gnb_pass_runs_every_k_steps_and_is_reproducible():
    hook = CurvatureHook("gnb", interval=10)
    assert [s for s in range(1, 46) if hook.due(s)] == [10, 20, 30, 40]  # floor(45 / 10) passes
    results = []
    for _ in range(2):
        model = tiny_lm()
        opt = SophiaG(model.parameters(), betas=(0.9, 0.5))
        hook = CurvatureHook("gnb", interval=10, seed=123)
        hook.run(model, opt, {"forget": lm_batch(), "retain": lm_batch()}, None, max_grad_norm=1.0)
        results.append(torch.cat([opt.state[p]["hessian"].flatten() for p in model.parameters()]))
        assert hook.passes == 1
    assert torch.equal(results[0], results[1]) and results[0].abs().sum() > 0
    with pytest.raises(ValueError, match="optim.estimator"):
        CurvatureHook("newton")


def test_sign_sgd_steps_by_the_sign_of_momentum():
    p = make_param([1.0, -1.0, 0.5])
    opt = SignSGD([p], lr=0.01, beta=0.9, weight_decay=0.5)
    set_grad(p, [2.0, -1e-8, 0.0])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1.0, -1.0, 0.5]) * (1 - 0.005) - 0.01 * torch.tensor([1.0, -1.0, 0.0]))


def test_influence_unlearning_is_one_damped_diagonal_newton_step():
    p = make_param([1.0, 2.0])
    opt = InfluenceUnlearning([p], scale=0.5, damping=0.1)
    for g in ([1.0, 2.0], [3.0, 0.0]):
        set_grad(p, g)
        opt.update_hessian()
    fisher = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])
    assert torch.allclose(opt.state[p]["hessian"], fisher)
    grad_neg_forget = torch.tensor([-0.4, 0.2])  # gradient of -L_f
    set_grad(p, grad_neg_forget)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1.0, 2.0]) - 0.5 * grad_neg_forget / (fisher + 0.1))
    fresh = InfluenceUnlearning([make_param([0.0])])
    fresh.param_groups[0]["params"][0].grad = torch.ones(1)
    with pytest.raises(RuntimeError, match="update_hessian"):
        fresh.step()
    assert math.isfinite(float(p.detach().sum()))


def test_strided_diagnostics_estimate_the_exact_ones():
    torch.manual_seed(0)
    values = {}
    for stride in (1, 64):
        p = torch.nn.Parameter(torch.zeros(400_000))
        opt = SophiaG([p], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0, diagnostics_stride=stride)
        p.grad = torch.ones(400_000)
        opt.update_hessian()  # h = 1
        p.grad = torch.rand(400_000, generator=torch.Generator().manual_seed(1)) * 2  # m / h uniform on [0, 2)
        opt.step(bs=1)
        values[stride] = opt.diagnostics()
    exact = values[1]
    assert exact["clip_fraction"] == pytest.approx(0.5, abs=0.01)  # half of U[0, 2) is >= 1
    assert exact["mean_update_over_lr"] == pytest.approx(0.75, abs=0.01)  # 0.5 * 0.5 + 0.5 * 1
    for key in ("clip_fraction", "mean_update_over_lr"):
        assert values[64][key] == pytest.approx(exact[key], abs=0.01)
    with pytest.raises(ValueError, match="diagnostics_stride"):
        SophiaG([torch.nn.Parameter(torch.zeros(1))], diagnostics_stride=0)


def test_strided_diagnostics_weight_each_tensor_by_its_size():
    # A large fully clipped tensor (sampled) and a small unclipped one (exact): the clipped share
    # is by coordinates, 400000 / 400100, not by samples.
    big = torch.nn.Parameter(torch.zeros(400_000))
    small = torch.nn.Parameter(torch.zeros(100))
    opt = SophiaG([big, small], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0, diagnostics_stride=64)
    big.grad, small.grad = torch.ones(400_000), torch.ones(100)
    opt.update_hessian()
    big.grad, small.grad = torch.full((400_000,), 5.0), torch.full((100,), 0.5)
    opt.step(bs=1)
    d = opt.diagnostics()
    assert d["clip_fraction"] == pytest.approx(400_000 / 400_100, rel=1e-6)
    assert d["mean_update_over_lr"] == pytest.approx((400_000 + 50) / 400_100, rel=1e-6)


def test_a_curvature_only_step_updates_the_curvature_and_moves_no_weight():
    """What an engine that calls step() after every backward (DeepSpeed) gets during a curvature pass."""
    p = make_param([1.0, -1.0])
    opt = SophiaG([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1)
    reference = SophiaG([make_param([1.0, -1.0])], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1)
    set_grad(p, [2.0, -3.0])
    with opt.curvature_only():
        opt.step()
    q = reference.param_groups[0]["params"][0]
    set_grad(q, [2.0, -3.0])
    reference.update_hessian()
    assert torch.equal(p.detach(), torch.tensor([1.0, -1.0]))  # no update, no weight decay
    assert torch.equal(opt.state[p]["hessian"], reference.state[q]["hessian"])
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(2))  # the momentum never saw it
    set_grad(p, [0.5, 0.5])
    opt.step()  # outside the context: an ordinary update again
    assert not torch.equal(p.detach(), torch.tensor([1.0, -1.0]))


def test_partitioned_diagnostics_add_up_the_step_calls_of_one_engine_step():
    """DeepSpeed calls step() once per parameter group; the logged figures must cover all of them,
    as one step() over every group does."""
    def run(partitioned: bool):
        big, small = torch.nn.Parameter(torch.zeros(300)), torch.nn.Parameter(torch.zeros(100))
        opt = SophiaG([{"params": [big]}, {"params": [small]}], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
        big.grad, small.grad = torch.ones(300), torch.ones(100)
        opt.update_hessian()
        big.grad, small.grad = torch.full((300,), 5.0), torch.full((100,), 0.5)
        if partitioned:
            opt.partitioned = True
            groups = opt.param_groups
            for group in groups:  # as the engine does: one group at a time
                opt.param_groups = [group]
                opt.step(bs=1)
            opt.param_groups = groups
        else:
            opt.step(bs=1)
        return opt.diagnostics()

    whole, by_group = run(False), run(True)
    assert whole["clip_fraction"] == pytest.approx(300 / 400)
    for key in ("clip_fraction", "mean_update_over_lr", "hessian_norm"):
        assert by_group[key] == pytest.approx(whole[key], rel=1e-6), key
