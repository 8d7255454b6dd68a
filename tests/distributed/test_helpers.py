"""Single-process checks of pyro_dgm.distributed: loaders, validation, chain merging."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_dgm.compare._arviz import arviz
from pyro_dgm.distributed import (
    TORCHRUN_ENV,
    ShardedIndexLoader,
    distribute_objective,
    gather_chains,
    index_plates,
    merge_chains,
    rank_seed,
    reduce_mean,
    setup_from_env,
)
from pyro_dgm.models.factor_analysis import FactorAnalysis


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)


def test_setup_without_torchrun_env_is_one_line_error(no_torchrun_env):
    with pytest.raises(ValueError, match="torchrun environment") as info:
        setup_from_env()
    assert "\n" not in str(info.value) and "RANK" in str(info.value)


def test_setup_world_size_larger_than_data(monkeypatch):
    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29999"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=r"world size 4 is larger than the data set \(3 rows"):
        setup_from_env("cpu", num_data=3)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_loader_partitions_the_global_batch(world):
    n, b = 23, 3
    single = ShardedIndexLoader(n, b * world, rank=0, world_size=1, seed=7)
    shards = [ShardedIndexLoader(n, b, rank=r, world_size=world, seed=7) for r in range(world)]
    for epoch in (0, 1):
        for loader in [single, *shards]:
            loader.set_epoch(epoch)
        batches = [list(s) for s in shards]
        assert all(len(bs) == len(single) == n // (b * world) for bs in batches)
        for step, global_batch in enumerate(single):
            union = torch.cat([bs[step] for bs in batches])
            assert union.dtype == torch.long and len(union) == b * world
            assert torch.equal(union, global_batch)  # same rows, same order
            assert len(set(union.tolist())) == len(union)  # disjoint shards
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert not all(torch.equal(a, c) for a, c in zip(first, single, strict=True))


def test_sharded_loader_validation():
    with pytest.raises(ValueError, match="world size 5 is larger than the data set"):
        ShardedIndexLoader(4, 1, rank=0, world_size=5)
    with pytest.raises(ValueError, match="batch_size"):
        ShardedIndexLoader(10, 6, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedIndexLoader(10, 2, rank=2, world_size=2)
    loader = ShardedIndexLoader(10, 3, rank=0, world_size=1, shuffle=False)
    assert [t.tolist() for t in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_helpers_without_a_process_group():
    assert rank_seed(10) == 10 and rank_seed(10, rank=3) == 13
    value = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert torch.equal(reduce_mean(value), value)
    fa = FactorAnalysis(3, 1)
    with pytest.raises(ValueError, match="process group"):
        distribute_objective(Trace_ELBO(), fa, AutoNormal(fa))


def test_index_plates_give_the_guide_the_loader_indices():
    fa = FactorAnalysis(3, 1, dtype=torch.float64)
    x = fa.simulate(10, seed=0).x
    guide = AutoNormal(fa, create_plates=index_plates(10))
    idx = torch.tensor([7, 2, 5])
    trace = pyro.poutine.trace(guide).get_trace(x, subsample=idx)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    z_loc = guide.locs.z.detach()
    torch.testing.assert_close(trace.nodes["z_unconstrained"]["fn"].base_dist.loc, z_loc[idx])


def _idata(seed, chains=1, draws=5):
    rng = np.random.default_rng(seed)
    return arviz.from_dict(
        posterior={"theta": rng.normal(size=(chains, draws, 2))},
        sample_stats={"lp": rng.normal(size=(chains, draws))},
        log_likelihood={"x": rng.normal(size=(chains, draws, 3))},
        observed_data={"x": np.arange(3.0)})


def test_merge_chains_concatenates_along_chain():
    parts = [_idata(0), _idata(1, chains=2)]
    merged = merge_chains(parts)
    assert merged.posterior.sizes["chain"] == 3
    assert list(merged.posterior.chain.values) == [0, 1, 2]
    np.testing.assert_array_equal(merged.posterior.theta.values[0],
                                  parts[0].posterior.theta.values[0])
    np.testing.assert_array_equal(merged.posterior.theta.values[1:],
                                  parts[1].posterior.theta.values)
    assert merged.log_likelihood.x.shape == (3, 5, 3)
    np.testing.assert_array_equal(merged.observed_data.x.values, np.arange(3.0))
    assert gather_chains(parts[0]) is parts[0]  # no process group: unchanged


def test_merge_chains_validation():
    with pytest.raises(ValueError, match="parts is empty"):
        merge_chains([])
    with pytest.raises(ValueError, match="different numbers of draws"):
        merge_chains([_idata(0), _idata(1, draws=6)])


@pytest.fixture
def single_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/init",
                                         rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_distribute_objective_validation(single_process_group):
    with pyro.settings.context(module_local_params=False):
        fa = FactorAnalysis(3, 1, dtype=torch.float64)
        guide = AutoNormal(fa)
    x = fa.simulate(6, seed=0).x
    with pyro.settings.context(module_local_params=True):
        with pytest.raises(ValueError, match="FactorAnalysis was built without module-local"):
            distribute_objective(Trace_ELBO(), fa, guide, x)
    with pyro.settings.context(module_local_params=False):
        with pytest.raises(ValueError, match="module_local_params=True"):
            distribute_objective(Trace_ELBO(), fa, guide, x)
    with pyro.settings.context(module_local_params=True):
        fa = FactorAnalysis(3, 1, dtype=torch.float64)
        guide = AutoNormal(fa, create_plates=index_plates(6))
        with pytest.raises(ValueError, match="objective must be a pyro.infer.ELBO"):
            distribute_objective(lambda m, g: None, fa, guide, x)
        with pytest.raises(ValueError, match="guide must be a torch.nn.Module"):
            distribute_objective(Trace_ELBO(), fa, lambda *a, **k: None, x)
        module = distribute_objective(Trace_ELBO(), fa, guide, x, subsample=torch.arange(3))
        assert isinstance(module, torch.nn.parallel.DistributedDataParallel)
        names = {k for k, _ in module.named_parameters()}
        assert any("locs.z" in k for k in names)  # lazy guide parameters were created
        loss = module(x, subsample=torch.tensor([4, 5, 0]))
        loss.backward()
        assert all(p.grad is not None for p in module.parameters())
        assert torch.equal(reduce_mean(loss), loss.detach())
