"""DLGM: sites and shapes, vectorized particles vs one-at-a-time, flow guides, bad input."""

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_dgm.dlgm import make_guide
from pyro_dgm.inference import IWAE
from pyro_dgm.models import DLGM, DLGMGuide

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, d, dtype, device):
    return torch.bernoulli(torch.full((n, d), 0.3, dtype=dtype, device=device))


@pytest.mark.parametrize("latent", [[3], [4, 3, 2]])
def test_sites_shapes_and_prior_samples(latent, dtype, device):
    model = DLGM(6, latent, hidden_dims=[8]).to(dtype=dtype, device=device)
    guide = DLGMGuide(model).to(dtype=dtype, device=device)
    x = _data(10, 6, dtype, device)
    idx = torch.tensor([1, 4, 7], device=device)
    gtr = poutine.trace(guide).get_trace(x, subsample=idx)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, subsample=idx)
    assert model.site_names == [f"z{i + 1}" for i in range(len(latent))]
    for name, d in zip(model.site_names, latent, strict=True):
        for tr in (gtr, mtr):
            value = tr.nodes[name]["value"]
            assert value.shape == (3, d) and value.dtype == dtype
            assert value.device.type == device.type
    assert torch.equal(mtr.nodes["x"]["value"], x[idx])
    assert mtr.nodes["x"]["scale"] == pytest.approx(10 / 3)
    prior = poutine.trace(model).get_trace(num_data=5)
    assert prior.nodes["x"]["value"].shape == (5, 6)
    assert set(prior.nodes["x"]["value"].unique().tolist()) <= {0.0, 1.0}


def test_vae_is_one_layer_dlgm():
    model = DLGM(5, [2], hidden_dims=[7])
    assert model.num_layers == 1 and len(model.means) == 0 and len(model.raw_scales) == 0
    # the decoder is the only generative network: 2 -> 7 -> 5
    assert [m.weight.shape for m in model.decoder if hasattr(m, "weight")] == [(7, 2), (5, 7)]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vectorized_particles_match_one_at_a_time(likelihood, dtype):
    """Log densities of K particles in one vectorized trace equal K separate traces."""
    model = DLGM(6, [4, 2], hidden_dims=[8], likelihood=likelihood).to(dtype)
    guide = DLGMGuide(model).to(dtype)
    x = torch.rand(5, 6, dtype=dtype)
    K = 4
    with pyro.plate("num_particles_vectorized", K, dim=-2):
        gtr = poutine.trace(guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    gtr.compute_log_prob()
    mtr.compute_log_prob()
    for k in range(K):
        values = {n: gtr.nodes[n]["value"][k] for n in model.site_names}
        cond = poutine.condition(model, data=values)
        one = poutine.trace(cond).get_trace(x)
        one.compute_log_prob()
        for name in [*model.site_names, "x"]:
            torch.testing.assert_close(mtr.nodes[name]["log_prob"][k], one.nodes[name]["log_prob"])
        gone = poutine.trace(poutine.condition(guide, data=values)).get_trace(x)
        gone.compute_log_prob()
        for name in model.site_names:
            torch.testing.assert_close(gtr.nodes[name]["log_prob"][k], gone.nodes[name]["log_prob"])


@pytest.mark.parametrize("guide_name", ["gaussian", "planar", "iaf", "realnvp"])
def test_guides_train_with_iwae(guide_name):
    """One IWAE step through every guide gives finite gradients for model and guide."""
    x = torch.bernoulli(torch.full((12, 6), 0.4, dtype=torch.float64))
    with pyro.settings.context(module_local_params=True):
        model = DLGM(6, [3, 2], hidden_dims=[8]).double()
        guide = make_guide(model, guide_name, num_flows=2).double()
        loss_fn = IWAE(num_particles=3, max_plate_nesting=1)(model, guide)
        loss = loss_fn(x, subsample=torch.arange(4))
        loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()] + [p.grad for p in guide.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="latent_dims"):
        DLGM(4, [])
    with pytest.raises(ValueError, match="latent_dims"):
        DLGM(4, [3, 0])
    with pytest.raises(ValueError, match="likelihood"):
        DLGM(4, [2], likelihood="poisson")
    model = DLGM(4, [2], hidden_dims=[5])
    guide = DLGMGuide(model)
    with pytest.raises(ValueError, match="obs_dim"):
        model(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="obs_dim"):
        model.check_data(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        model(torch.full((3, 4), 2.0))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        model.check_data(torch.full((3, 4), -0.5))
    with pytest.raises(ValueError, match="NaN"):
        model.check_data(torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="guide"):
        make_guide(model, "gumbel")
    with pytest.raises(ValueError, match="data x"):
        guide()
    # a Gaussian likelihood takes any real data
    DLGM(4, [2], likelihood="gaussian").check_data(torch.full((3, 4), 5.0))
