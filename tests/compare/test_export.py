import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.mcmc import RandomWalkKernel

from pyro_dgm.compare import from_guide, from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare._scoring import _score_loop, _score_vectorized
from pyro_dgm.inference.model_info import model_info
from pyro_dgm.models import FactorAnalysis

pytestmark = pytest.mark.filterwarnings("ignore:num_chains=2 is more than available_cpu")


def regression(x, y=None):
    """Linear regression with a global scalar, a global vector and a data plate."""
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)


@pytest.fixture(autouse=True)
def _no_silent_fallback(monkeypatch, request):
    """Models that broadcast must be scored in one vectorized trace, not draw by draw."""
    if "falls_back" in request.node.name:
        return
    import pyro_dgm.compare._scoring as traces

    def fail(*args, **kwargs):
        raise AssertionError("vectorized scoring failed and fell back to the loop")

    monkeypatch.setattr(traces, "_score_loop", fail)


@pytest.fixture
def data():
    x = torch.randn(20, 2, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.3 * torch.randn(20,
                                                                               dtype=torch.float64)
    return x, y


def _check_groups(idata, chains, draws, n=20):
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(
        idata.groups())
    post = idata.posterior
    assert post["sigma"].shape == (chains, draws)  # no plate-padding singleton dims
    assert post["beta"].shape == (chains, draws, 2)
    assert idata.log_likelihood["y"].shape == (chains, draws, n)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.observed_data["y"].shape == (n,)
    assert idata.sample_stats["lp"].shape == (chains, draws)
    assert np.isfinite(idata.log_likelihood["y"].values).all()


def _loglik_by_hand(idata, x, y, chain, draw):
    sigma = float(idata.posterior["sigma"][chain, draw])
    beta = torch.as_tensor(idata.posterior["beta"][chain, draw].values)
    return dist.Normal(x @ beta, sigma).log_prob(y).numpy()


def test_from_mcmc_nuts_two_chains(data):
    x, y = data
    mcmc = MCMC(NUTS(regression), num_samples=40, warmup_steps=40, num_chains=2,
                disable_progbar=True)
    mcmc.run(x, y)
    idata = from_mcmc(mcmc)
    _check_groups(idata, 2, 40)
    assert idata.sample_stats["diverging"].dtype == bool
    assert "acceptance_rate" in idata.sample_stats
    assert idata.posterior.attrs["inference_kind"] == "mcmc"
    # the pointwise log-likelihood is the observation density at each draw
    expected = _loglik_by_hand(idata, x, y, 1, 7)
    assert np.allclose(idata.log_likelihood["y"][1, 7].values, expected, atol=1e-10)
    summary = arviz.summary(idata)
    assert {"r_hat", "ess_bulk"} <= set(summary.columns)
    assert np.isfinite(summary["r_hat"]).all()


def test_from_mcmc_random_walk_kernel_without_divergences(data):
    x, y = data
    mcmc = MCMC(RandomWalkKernel(regression), num_samples=60, warmup_steps=60, num_chains=2,
                disable_progbar=True)
    mcmc.run(x, y)
    assert "divergences" not in mcmc.diagnostics()  # what makes arviz.from_pyro fail
    idata = from_mcmc(mcmc)
    _check_groups(idata, 2, 60)
    assert not idata.sample_stats["diverging"].values.any()
    rates = idata.sample_stats["acceptance_rate"].values
    assert rates.shape == (2, 60) and np.all((rates >= 0) & (rates <= 1))
    assert np.isfinite(arviz.summary(idata)["r_hat"]).all()


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoMultivariateNormal])
def test_from_guide_matches_mcmc_layout(data, guide_cls):
    x, y = data
    guide = guide_cls(regression)
    svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step(x, y)
    idata = from_guide(regression, guide, x, y, num_samples=30)
    _check_groups(idata, 1, 30)
    assert idata.posterior.attrs["inference_kind"] == "vi"
    expected = _loglik_by_hand(idata, x, y, 0, 3)
    assert np.allclose(idata.log_likelihood["y"][0, 3].values, expected, atol=1e-10)
    summary = arviz.summary(idata, kind="stats")
    assert len(summary) == 3


def test_from_guide_stacks_independent_fits_as_chains(data):
    x, y = data
    guides = []
    for _ in range(3):
        pyro.clear_param_store()
        guide = AutoNormal(regression)
        svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(20):
            svi.step(x, y)
        guides.append(guide)
    idata = from_guide(regression, guides, x, y, num_samples=25)
    assert idata.posterior["beta"].shape == (3, 25, 2)
    assert "r_hat" in arviz.summary(idata).columns


def test_local_latents_get_plate_dims_and_vectorized_scoring_matches_loop():
    fa = FactorAnalysis(4, 2, dtype=torch.float64)
    x = fa.simulate(15, seed=0).x
    guide = AutoNormal(fa)
    svi = SVI(fa, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    idata = from_guide(fa, guide, x, num_samples=6)
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim_1")
    assert idata.posterior["z"].shape == (1, 6, 15, 2)
    assert idata.posterior["W_lower"].shape == (1, 6, fa.num_lower)
    info = model_info(fa, (x,), {})
    draws = {k: torch.as_tensor(idata.posterior[k].values[0]) for k in info.latent}
    pv, lpv = _score_vectorized(fa, draws, info, (x,), {})
    pl, lpl = _score_loop(fa, draws, info, (x,), {})
    assert torch.allclose(pv["x"], pl["x"], atol=1e-10)
    assert torch.allclose(lpv, lpl, atol=1e-8)


def test_non_vectorizable_model_falls_back_to_one_trace_per_draw(data):
    x, y = data

    def scalar_model(x, y=None):
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        # a Python branch on the value: cannot broadcast over a draw dimension
        loc = x @ beta if beta.dim() == 1 else None
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    guide = AutoNormal(scalar_model)
    svi = SVI(scalar_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(x, y)
    idata = from_guide(scalar_model, guide, x, y, num_samples=5)
    assert idata.log_likelihood["y"].shape == (1, 5, 20)


def test_netcdf_round_trip(tmp_path, data):
    x, y = data
    guide = AutoNormal(regression)
    SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()).step(x, y)
    idata = from_guide(regression, guide, x, y, num_samples=10, attrs={"wall_time_s": 1.5})
    path = tmp_path / "vi.nc"
    idata.to_netcdf(str(path))
    back = arviz.from_netcdf(str(path))
    assert np.allclose(back.posterior["beta"].values, idata.posterior["beta"].values)
    assert back.posterior.attrs["wall_time_s"] == 1.5


def test_from_guide_bad_input(data):
    x, y = data
    with pytest.raises(ValueError, match="num_samples"):
        from_guide(regression, AutoNormal(regression), x, y, num_samples=0)

    def partial_guide(x, y=None):
        pyro.sample("sigma", dist.LogNormal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match="beta"):
        from_guide(regression, partial_guide, x, y, num_samples=3)


def test_discrete_draws_stored_as_floats_are_cast_back_for_scoring():
    from pyro_dgm.compare import to_inference_data

    locs = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)

    def model(y):
        k = pyro.sample("k", dist.Categorical(logits=torch.zeros(3, dtype=torch.float64)))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(locs[k], 1.0), obs=y)

    y = torch.tensor([2.5, 3.5], dtype=torch.float64)
    info = model_info(model, (y,), {})
    draws = {"k": torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.float64)}  # as Gibbs stores them
    idata = to_inference_data(draws, info, model=model, args=(y,))
    expected = dist.Normal(locs[2], 1.0).log_prob(y).numpy()
    assert np.allclose(idata.log_likelihood["y"][0, 1].values, expected)
