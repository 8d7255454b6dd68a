"""Comparison inputs are checked (issue 16, case 5).

- ``from_guide`` on a guide that was never trained exported its initial values as a posterior
  without a word: it now warns (:class:`UntrainedGuideWarning`), and stays silent for guides
  trained by ``SVI``, by a plain torch loop, loaded with ``load_state_dict``, or without
  parameters (a Laplace approximation);
- ``compare_posteriors`` on posteriors sharing no variable returned an empty table (the
  failure surfaced later as KeyError/UnboundLocalError), and elements of a variable whose
  shape differs between methods were dropped: both now raise ``ValueError`` naming the
  variables.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoNormal
from pyro.poutine import trace

from pyro_dgm.compare import compare_posteriors, from_guide
from pyro_dgm.compare._arviz import arviz, set_attrs
from pyro_dgm.compare.export import UntrainedGuideWarning, untrained_parameters


def regression(x, y=None):
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)


@pytest.fixture
def data():
    x = torch.randn(15, 2, dtype=torch.float64)
    return x, x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.3 * torch.randn(
        15, dtype=torch.float64)


def _svi(guide, data, steps=3, loss=None):
    svi = SVI(regression, guide, pyro.optim.ClippedAdam({"lr": 0.05}), loss or Trace_ELBO())
    for _ in range(steps):
        svi.step(*data)


# -- from_guide ---------------------------------------------------------------------------------
def test_never_called_autoguide_warns(data):
    with pytest.warns(UntrainedGuideWarning, match="never trained.*AutoNormal.locs.beta"):
        idata = from_guide(regression, AutoNormal(regression), *data, num_samples=10)
    assert idata.posterior["beta"].shape == (1, 10, 2)  # still exported


def test_called_but_never_stepped_warns(data):
    guide = AutoNormal(regression)
    guide(*data)  # parameters created, never optimized
    with pytest.warns(UntrainedGuideWarning, match="initial values"):
        from_guide(regression, guide, *data, num_samples=10)


def function_guide(x, y=None):
    loc = pyro.param("loc", x.new_zeros(2))
    pyro.sample("beta", dist.Normal(loc, 0.1).to_event(1))
    pyro.sample("sigma", dist.LogNormal(pyro.param("log_s", x.new_tensor(0.0)), 0.1))


def test_function_guide_with_pyro_param_warns(data):
    with pytest.warns(UntrainedGuideWarning, match="'loc', 'log_s'"):
        from_guide(regression, function_guide, *data, num_samples=10)


def test_one_untrained_guide_of_several_is_named(data):
    trained = AutoNormal(regression)
    _svi(trained, data)
    with pytest.warns(UntrainedGuideWarning, match="guide 1 looks never trained"):
        from_guide(regression, [trained, function_guide], *data, num_samples=10)


def test_trained_guides_do_not_warn(data):
    """SVI (gradients left as zeros), a torch loop that sets gradients to None (in-place
    steps advance the version counter), load_state_dict, and a parameter-free Laplace guide."""
    svi_guide = AutoNormal(regression)
    _svi(svi_guide, data)
    from_guide(regression, svi_guide, *data, num_samples=10)

    pyro.clear_param_store()
    torch_guide = AutoNormal(regression)
    torch_guide(*data)
    optimizer = torch.optim.Adam(torch_guide.parameters(), lr=0.05)
    Trace_ELBO().differentiable_loss(regression, torch_guide, *data).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in torch_guide.parameters())
    from_guide(regression, torch_guide, *data, num_samples=10)

    pyro.clear_param_store()
    loaded = AutoNormal(regression)
    loaded(*data)
    loaded.load_state_dict(svi_guide.state_dict())
    from_guide(regression, loaded, *data, num_samples=10)

    pyro.clear_param_store()
    laplace = AutoLaplaceApproximation(regression)
    _svi(laplace, data, steps=300)  # near the MAP, so the Hessian is positive definite
    gaussian = laplace.laplace_approximation(*data)
    assert untrained_parameters(trace(gaussian).get_trace(*data)) == []
    from_guide(regression, gaussian, *data, num_samples=10)


# -- compare_posteriors --------------------------------------------------------------------------
def _idata(draws: dict, kind: str):
    idata = arviz.from_dict(posterior=draws)
    set_attrs(idata, {"inference_kind": kind, "wall_time_s": 1.0})
    return idata


def test_no_shared_variable_raises_naming_the_sites():
    rng = np.random.default_rng(0)
    idatas = {"nuts": _idata({"beta": rng.standard_normal((2, 50, 2))}, "mcmc"),
              "advi": _idata({"theta": rng.standard_normal((1, 100, 2))}, "vi")}
    with pytest.raises(ValueError, match=r"share no variable.*'nuts' has \['beta'\].*"
                                         r"'advi' has \['theta'\]"):
        compare_posteriors(idatas, reference="nuts")
    with pytest.raises(ValueError, match="var_names: empty"):
        compare_posteriors(idatas, reference="nuts", var_names=[])


def test_shape_mismatch_raises_naming_the_sites():
    rng = np.random.default_rng(0)
    idatas = {"nuts": _idata({"beta": rng.standard_normal((2, 50, 3)),
                              "s": rng.standard_normal((2, 50))}, "mcmc"),
              "advi": _idata({"beta": rng.standard_normal((1, 100, 2)),
                              "s": rng.standard_normal((1, 100))}, "vi")}
    with pytest.raises(ValueError, match=r"shape differs.*'beta' \('nuts': \(3,\), "
                                         r"'advi': \(2,\)\)"):
        compare_posteriors(idatas, reference="nuts")
    # the variables that do agree can still be compared
    table = compare_posteriors(idatas, reference="nuts", var_names=["s"])
    assert set(table["parameter"]) == {"s"} and len(table) == 2
