"""Run by tests/test_fsdp.py under torchrun (2 CPU processes, gloo): Sophia on a tiny Llama sharded
with FSDP2's ``fully_shard`` (the engine accelerate's FSDP2 uses), against the same optimizer on an
unsharded copy that sees every process's rows. Process 0 writes the findings as JSON to argv[1]."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import LlamaConfig, LlamaForCausalLM

from soul.optim import CurvatureHook, SophiaG, param_groups

STEPS, ROWS_PER_RANK = 6, 2


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def optimizer_for(variant: str, model) -> SophiaG:
    groups = param_groups(model, 0.1)
    if variant == "soul_ref":  # curvature from the step's own gradient, as optim=soul_ref
        return SophiaG(groups, lr=1e-2, rho=0.04, bs=64, hessian_in_step=True, double_momentum=True)
    return SophiaG(groups, lr=1e-2, rho=0.04, bs=64)  # GNB curvature pass every 2 steps, as optim=sophia


def train(model, optimizer, hook, batches, rows) -> dict:
    diagnostics = {}
    for step, data in enumerate(batches, 1):
        batch = data[rows]
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hook is not None and hook.due(step):
            hook.run(model, optimizer, {"forget": {"input_ids": batch, "labels": batch,
                                                   "attention_mask": torch.ones_like(batch)}}, None, 1.0)
        diagnostics = optimizer.diagnostics()
    return diagnostics


def full(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 128, (ROWS_PER_RANK * world, 16), generator=generator) for _ in range(STEPS)]
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    results = {}
    for variant in ("soul_ref", "sophia"):
        model = tiny_llama()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = optimizer_for(variant, model)
        hook = CurvatureHook("gnb", interval=2, seed=0) if variant == "sophia" else None
        diagnostics = train(model, optimizer, hook, batches, mine)
        weights = full(model)
        state = next(s for s in optimizer.state.values() if s["hessian"].dim() == 2)
        found = {"param_type": type(next(model.parameters())).__name__,
                 "hessian_type": type(state["hessian"]).__name__,
                 "hessian_local_share": state["hessian"].to_local().numel() / state["hessian"].numel(),
                 "clip_fraction": diagnostics["clip_fraction"], "hessian_norm": diagnostics["hessian_norm"],
                 "curvature_passes": hook.passes if hook else 0,
                 "checksum": float(sum(w.double().sum() for w in weights.values()))}
        if variant == "soul_ref":  # deterministic: the unsharded run on all rows must end where the sharded one does
            reference = tiny_llama()
            ref_optimizer = optimizer_for(variant, reference)
            ref_diagnostics = train(reference, ref_optimizer, None, batches, slice(None))
            # Sophia clips m / (rho B h) to +-1: coordinates whose gradient is ~0 take a sign that float
            # summation order decides, so the sharded run matches coordinate by coordinate almost everywhere.
            diffs = torch.cat([(weights[k] - v).abs().flatten() for k, v in reference.state_dict().items()])
            found["share_differing_from_unsharded"] = float((diffs > 1e-5).float().mean())
            found["mean_abs_diff_to_unsharded"] = float(diffs.mean())
            found["unsharded_clip_fraction"] = ref_diagnostics["clip_fraction"]
            found["unsharded_hessian_norm"] = ref_diagnostics["hessian_norm"]
            found["moved"] = max(float((v - tiny_llama().state_dict()[k]).abs().max())
                                 for k, v in reference.state_dict().items())
        everyone = [None] * world
        dist.all_gather_object(everyone, found)
        results[variant] = everyone
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
