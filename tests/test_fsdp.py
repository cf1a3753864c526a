"""Sophia under FSDP2 sharding (two CPU processes over gloo, torchrun): its state is sharded with the
parameters, the sharded run ends where an unsharded one on the same rows does, and the logged
diagnostics are totals over the processes, not one shard's."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "results.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29571", str(REPO / "tests" / "fsdp_worker.py"), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("variant", ["soul_ref", "sophia"])
def test_sophia_state_is_sharded_with_the_parameters(fsdp_results, variant):
    ranks = fsdp_results[variant]
    for found in ranks:
        assert found["param_type"] == "DTensor" and found["hessian_type"] == "DTensor"
        assert found["hessian_local_share"] == pytest.approx(0.5)  # each process holds half the curvature EMA
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # one model, whichever process gathers it
    # Diagnostics are totals over the shards: every process logs the same figures.
    assert ranks[0]["clip_fraction"] == ranks[1]["clip_fraction"]
    assert ranks[0]["hessian_norm"] == ranks[1]["hessian_norm"] > 0


def test_sharded_sophia_matches_the_unsharded_run(fsdp_results):
    found = fsdp_results["soul_ref"][0]
    assert found["moved"] > 1e-2  # the weights did move (6 steps at lr 1e-2)
    # All but the coordinates whose gradient is ~0 (the sign of m / (rho B h) there is float noise).
    assert found["share_differing_from_unsharded"] < 0.01
    assert found["mean_abs_diff_to_unsharded"] < 1e-4 * found["moved"]
    assert found["clip_fraction"] == pytest.approx(found["unsharded_clip_fraction"], abs=1e-3)  # same few coordinates
    assert found["hessian_norm"] == pytest.approx(found["unsharded_hessian_norm"], rel=1e-5)


def test_the_curvature_pass_runs_on_sharded_parameters(fsdp_results):
    assert all(found["curvature_passes"] == 3 for found in fsdp_results["sophia"])  # steps 2, 4, 6
