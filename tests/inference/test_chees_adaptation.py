"""ChEES adaptation, exact identities: the trajectory-length iterate is not lifted by a
step-size spike, it moves with the metric at a window's end, and a user's starting inverse
mass matrix (checked, factored)."""

import math

import pytest
import torch

from pyro_dgm.inference.chees_adaptation import ChEESAdapter, ChEESInfo

F64 = torch.float64


def _still_info(chains=8, dim=3):
    """One step in which no chain moved: the ChEES gradient is exactly zero."""
    z = torch.randn(chains, dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    return ChEESInfo(z, z, torch.zeros_like(z), torch.full((chains,), 0.7, dtype=F64),
                     torch.zeros(chains, dtype=torch.bool), z, 0.1)


def test_step_size_spike_does_not_lift_the_trajectory_length():
    adapter = ChEESAdapter(3, 1000, step_size=0.1, trajectory_length=0.2)
    state = adapter.init(8, dtype=F64)
    spiked = state._replace(log_step=torch.tensor(math.log(5.0), dtype=F64))
    new = adapter.update(spiked, 0, _still_info())
    assert float(new.log_length) == pytest.approx(math.log(0.2))  # zero gradient: unchanged
    # what the sampler uses is still at least one step of the current size
    assert float(adapter.length_of(new)) >= float(adapter.step_size_of(new)) * (1 - 1e-12)


@pytest.mark.parametrize("mass", ["diag", "dense"])
def test_window_end_carries_the_trajectory_length_over_to_the_new_metric(mass):
    # chains spread with variance 4 in every coordinate under an identity metric: the new
    # metric has scale 2, so T (a time in the metric's units) halves
    num_warmup, chains, dim = 200, 400, 3
    adapter = ChEESAdapter(dim, num_warmup, mass_matrix=mass, trajectory_length=1.0,
                           adapt_step_size=False)
    start, end = adapter.windows[0]
    state = adapter.init(chains, dtype=F64)
    g = torch.Generator().manual_seed(1)
    for t in range(end):
        z = 2.0 * torch.randn(chains, dim, dtype=F64, generator=g)
        info = _still_info(chains, dim)._replace(position=z)
        before = state
        state = adapter.update(state, t, info)
    n = state.dof
    shrink, jitter = n / (n + 5.0), 1e-3 * 5.0 / (n + 5.0)
    sd = adapter.marginal_sd(state.scale)
    assert bool((sd > 1.8).all()) and bool((sd < 2.2).all())
    if mass == "dense":
        mean_var = float((state.scale * state.scale).sum()) / dim
    else:
        mean_var = float((state.scale ** 2).mean())
    assert shrink * 3.0 < mean_var < shrink * 5.0 + jitter
    shift = float(before.log_length) - float(state.log_length)
    assert shift == pytest.approx(0.5 * math.log(mean_var), rel=1e-10)
    assert float(before.log_length_avg) - float(state.log_length_avg) == pytest.approx(shift)


def test_initial_inverse_mass_matrix():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    dense = ChEESAdapter(2, 100).init(4, dtype=F64, inverse_mass_matrix=cov)
    torch.testing.assert_close(dense.scale @ dense.scale.mT, cov)
    diag = ChEESAdapter(2, 100, mass_matrix="diag").init(4, dtype=F64, inverse_mass_matrix=cov)
    torch.testing.assert_close(diag.scale, cov.diagonal().sqrt())
    vector = ChEESAdapter(2, 100).init(4, dtype=F64, inverse_mass_matrix=cov.diagonal())
    torch.testing.assert_close(vector.scale, torch.diag(cov.diagonal().sqrt()))


@pytest.mark.parametrize("matrix,mass,match", [
    (torch.ones(3, dtype=F64), "dense", "shape"),
    (torch.tensor([1.0, float("nan")], dtype=F64), "dense", "not finite"),
    (torch.tensor([1.0, -1.0], dtype=F64), "diag", "not positive"),
    (torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64), "dense", "positive definite"),
    (torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64), "dense", "symmetric"),
    (torch.eye(2, dtype=F64), "identity", "identity"),
])
def test_bad_initial_inverse_mass_matrix(matrix, mass, match):
    with pytest.raises(ValueError, match=f"inverse_mass_matrix: .*{match}"):
        ChEESAdapter(2, 100, mass_matrix=mass).init(4, dtype=F64, inverse_mass_matrix=matrix)
