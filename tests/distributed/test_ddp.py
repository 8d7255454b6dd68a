"""DistributedDataParallel SVI and multi-process chains: 2 CPU processes, gloo, float64.

One spawn runs every scenario (module-scoped fixture, ~10 s); the tests assert on what
each process saved.
"""

from __future__ import annotations

import _ddp_workers
import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
TOL = 1e-10


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_workers.run, args=(WORLD, str(tmp / "init"), str(tmp),
                                     list(_ddp_workers.SCENARIOS)),
             nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_grads_close(grads, ref):
    assert set(grads) == set(ref) and grads
    for name, g in grads.items():
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, ref[name], rtol=0, atol=TOL, msg=name)


SCENARIOS = ["global", "local", "global_compiled", "local_compiled"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ddp_gradients_match_single_process(results, scenario):
    # global latents only: the DDP gradient is the full-batch gradient; with local latents
    # it is the mean of the single-process gradients of the two shards
    ref = results[0][scenario]["ref_grads"]
    for rank in range(WORLD):
        _assert_grads_close(results[rank][scenario]["grads"], ref)
        torch.testing.assert_close(results[rank][scenario]["loss"],
                                   results[0][scenario]["ref_loss"], rtol=0, atol=TOL)
        if scenario.endswith("compiled"):  # the compiled step ran (one graph, no fallback)
            assert int(results[rank][scenario]["graphs"]) == 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_parameters_identical_after_a_step(results, scenario):
    for rank in range(WORLD):
        params = results[rank][scenario]["params_all_ranks"]
        assert params.shape[0] == WORLD
        assert torch.equal(params[0], params[1])
        assert results[rank][scenario]["params_changed"] > 1e-3  # the step did something
    assert torch.equal(results[0][scenario]["params_all_ranks"],
                       results[1][scenario]["params_all_ranks"])


def test_iwae_global_latent_is_biased_under_sharding(results):
    r = results[0]["iwae_global"]
    if "unavailable" in r:
        pytest.skip("pyro_dgm.inference.IWAE is not available")
    log_z = r["log_evidence"]
    # the guide is the exact posterior: every full-data weight is p(x), so IWAE_K = log p(x)
    for k in (1, 8):
        torch.testing.assert_close(r[f"full_{k}"], log_z.expand(20), rtol=0, atol=TOL)
    # K = 1 (the ELBO) is linear in the shards: the sharded mean is exact too
    torch.testing.assert_close(r["sharded_1"], log_z.expand(20), rtol=0, atol=TOL)
    assert not bool(r["warned_1"])
    # K > 1: the log-sum-exp of a shard's weights is convex in them, so the mean over
    # shards of IWAE_K (shared particles) is >= log p(x): no longer a lower bound
    gap = r["sharded_8"] - log_z
    assert bool((gap > 0).all()), gap
    assert float(gap.mean()) > 0.05
    assert bool(r["warned_8"])  # IWAE warns about the biased subsample
    assert torch.equal(results[1]["iwae_global"]["sharded_8"], r["sharded_8"])


def test_gather_chains(results):
    merged = results[0]["chains"]["merged"]
    assert merged.shape == (WORLD, 40)
    for rank in range(WORLD):
        own = results[rank]["chains"]["own"]
        torch.testing.assert_close(torch.as_tensor(merged[rank]), own, rtol=0, atol=0)
        assert torch.equal(results[rank]["chains"]["merged"], merged)
    assert not torch.equal(merged[0], merged[1])  # seeds offset by rank
    assert results[0]["chains"]["merged_ll"].shape == (WORLD, 40, 4)
    assert results[0]["chains"]["observed"].shape == (4,)
