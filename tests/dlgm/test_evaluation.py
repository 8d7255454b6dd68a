"""Evaluation of DLGMs: L_5000 against quadrature, quadrature against the FA closed form,
active units, bits per dimension, imputation, per-image PSIS k-hat."""

import copy
import json
import math

import pyro
import pytest
import torch

from pyro_dgm._shared import inverse_softplus
from pyro_dgm.cli import main
from pyro_dgm.data import load_digits
from pyro_dgm.dlgm import TrainConfig, evaluation, train
from pyro_dgm.dlgm.evaluation import (
    active_units,
    bits_per_dim,
    impute,
    khat_histogram,
    pointwise_khat,
    quadrature_log_likelihood,
    save_image_grid,
)
from pyro_dgm.inference import IWAE
from pyro_dgm.models import DLGM, DLGMGuide, fa_log_marginal, fa_posterior

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_2d():
    """A 2-latent Bernoulli VAE briefly trained with IWAE-5 on 300 digits (float64)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.set_rng_seed(1)
    x = load_digits(binarize="fixed", max_rows=300, dtype=torch.float64)
    try:
        model, guide = _train_2d(x)
    finally:
        torch.set_num_threads(before)
    return model, guide, x


def _train_2d(x):
    with pyro.settings.context(module_local_params=True):
        model = DLGM(64, [2], hidden_dims=[32]).double()
        guide = DLGMGuide(model).double()
        loss_fn = IWAE(num_particles=5, max_plate_nesting=1)(model, guide)
        opt = torch.optim.Adam(loss_fn.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(40):
            for idx in torch.randperm(300, generator=g).split(50):
                loss = loss_fn(x, subsample=idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model, guide


def test_quadrature_matches_fa_closed_form(dtype):
    """Linear decoder + Gaussian likelihood is factor analysis: log N(x; b, WW^T + Psi)."""
    model = DLGM(3, [2], hidden_dims=[], likelihood="gaussian").to(dtype)
    x = torch.randn(4, 3, dtype=dtype)
    W, b = model.decoder[0].weight.detach(), model.decoder[0].bias.detach()
    psi = torch.nn.functional.softplus(model.raw_obs_scale.detach()) ** 2
    exact = fa_log_marginal(x, b, W, psi)
    approx = quadrature_log_likelihood(model, x, bound=7.0, num_points=301)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(approx, exact.to(dtype), atol=tol, rtol=0)


def test_l5000_agrees_with_quadrature(trained_2d):
    """Acceptance: the k=5000 estimate is within 0.05 nats of quadrature for every image."""
    model, guide, x = trained_2d
    x_test = load_digits(binarize="fixed", split="test", max_rows=10, dtype=torch.float64)
    exact = quadrature_log_likelihood(model, x_test, bound=5.0, num_points=301)
    pyro.set_rng_seed(0)
    est = evaluation.test_log_likelihood(model, guide, x_test, num_samples=5000, chunk_size=1000)
    assert est.log_likelihood.shape == (10,)
    assert (est.ess > 100).all()
    assert (est.log_likelihood - exact).abs().max() < 0.05
    # a lower bound on average: no large positive deviation
    assert float((est.log_likelihood - exact).mean()) < 0.01


def test_active_units_counts_units_whose_mean_varies(dtype):
    model = DLGM(6, [4], hidden_dims=[8]).to(dtype)
    guide = DLGMGuide(model).to(dtype)
    last = guide.nets[0][-1]
    with torch.no_grad():
        last.weight[:4] = 0.0  # locs of units 0-3: constant ...
        last.bias[:4] = 0.3
        last.weight[1] = 3.0  # ... except unit 1 and 3, strongly driven by x
        last.weight[3] = -3.0
    x = torch.rand(200, 6, dtype=dtype).round()
    assert active_units(model, guide, x, num_samples=50) == {"z1": 2}
    assert active_units(model, guide, x, num_samples=50, threshold=1e9) == {"z1": 0}


def test_bits_per_dim_matches_analytic_kl():
    """One Gaussian layer: KL(q || N(0, I)) has a closed form; the MC estimate agrees."""
    model = DLGM(5, [3], hidden_dims=[6]).double()
    guide = DLGMGuide(model).double()
    x = torch.rand(40, 5, dtype=torch.float64).round()
    with torch.no_grad():
        loc, raw = guide.nets[0](x).chunk(2, -1)
    scale = torch.nn.functional.softplus(raw + 0.5413)
    kl = (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum(-1).mean()
    bits = bits_per_dim(model, guide, x, num_samples=2000)
    exact = float(kl) / (math.log(2) * 5)
    # MC error: sd of the per-sample log-ratio / sqrt(#samples), generous factor 5
    assert bits["z1"] == pytest.approx(exact, abs=5 * 1.0 / math.sqrt(2000 * 40) / math.log(2))
    assert bits["reconstruction"] > 0


def test_imputation_beats_pixel_means_and_keeps_observed(trained_2d, tmp_path):
    model, guide, x = trained_2d
    x_test = load_digits(binarize="fixed", split="test", max_rows=60, dtype=torch.float64)
    observed = torch.ones_like(x_test, dtype=torch.bool)
    observed[:, 32:] = False
    result = impute(model, guide, x_test, observed, fill=x.mean(0))
    imputed = result["imputed"]
    assert torch.equal(imputed[observed], x_test[observed])
    assert ((imputed >= 0) & (imputed <= 1)).all()
    assert result["mae"] < result["baseline_mae"]
    full = impute(model, guide, x_test, torch.ones_like(observed), num_iterations=1)
    assert torch.equal(full["imputed"], x_test)
    save_image_grid(imputed[:16], tmp_path / "imp.png")
    assert (tmp_path / "imp.png").stat().st_size > 0
    with pytest.raises(ValueError, match="observed"):
        impute(model, guide, x_test, observed.float())


def _exact_guide(model, widen=1.0):
    """A linear DLGMGuide equal to the exact posterior N(A x + c, s^2) of a one-factor
    linear-Gaussian DLGM (factor analysis), its scale times ``widen``."""
    W, b = model.decoder[0].weight.detach(), model.decoder[0].bias.detach()
    psi = torch.nn.functional.softplus(model.raw_obs_scale.detach()) ** 2
    guide = DLGMGuide(model, hidden_dims=[]).double()
    eye = torch.eye(model.obs_dim, dtype=torch.float64)
    A, _ = fa_posterior(eye, torch.zeros_like(b), W, psi)  # rows: posterior mean of e_i
    _, cov = fa_posterior(b[None], b, W, psi)
    with torch.no_grad():
        net = guide.nets[0][-1]
        net.weight.zero_()
        net.weight[0] = A[:, 0]
        net.bias[0] = -(A[:, 0] @ b)
        net.bias[1] = inverse_softplus(widen * cov[0, 0].sqrt()) - 0.5413
    return guide


def test_pointwise_khat_of_exact_and_wider_guides():
    """The exact posterior as guide: ratios equal to rounding, no tail (k-hat = -inf); a
    1.5x too wide guide: bounded ratios, k-hat < 0.5 for nearly every point."""
    model = DLGM(5, [1], hidden_dims=[], likelihood="gaussian").double()
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    khat = pointwise_khat(model, _exact_guide(model), x, num_samples=200, chunk_size=64)
    assert khat.shape == (40,) and khat.dtype == torch.float64
    assert torch.isneginf(khat).all()
    khat = pointwise_khat(model, _exact_guide(model, widen=1.5), x, num_samples=500)
    assert torch.isfinite(khat).all()
    assert float((khat < 0.5).double().mean()) >= 0.9
    with pytest.raises(ValueError, match="num_samples"):
        pointwise_khat(model, _exact_guide(model), x, num_samples=20)


def test_pointwise_khat_flags_a_too_narrow_recognition_model(trained_2d, tmp_path):
    """The trained guide: few images with k-hat >= 0.7 (1 of 60 at the time of writing);
    its scales shrunk (raw outputs - 3, about 10x): most images (52 of 60)."""
    model, guide, _ = trained_2d
    x_test = load_digits(binarize="fixed", split="test", max_rows=60, dtype=torch.float64)
    with pyro.settings.context(module_local_params=True):
        khat = pointwise_khat(model, guide, x_test, num_samples=1000, chunk_size=500)
        narrow = copy.deepcopy(guide)
        with torch.no_grad():
            narrow.nets[0][-1].bias[2:] -= 3.0
        khat_narrow = pointwise_khat(model, narrow, x_test, num_samples=1000, chunk_size=500)
    assert float((khat >= 0.7).double().mean()) <= 0.1 and float(khat.median()) < 0.5
    assert float((khat_narrow >= 0.7).double().mean()) >= 0.6
    assert float(khat_narrow.median()) > float(khat.median()) + 0.5
    khat_histogram(khat, tmp_path / "khat.png", title="test")
    assert (tmp_path / "khat.png").stat().st_size > 0


def test_evaluate_run_reports_the_share_of_unreliable_images(tmp_path, capsys):
    """``pyro-dgm evaluate`` on a tiny trained run: the k-hat summary in the JSON it prints
    and in evaluation.json, and the histogram in the run directory."""
    config = TrainConfig(latent_dims=[2], hidden_dims=[8], objective="elbo", k=1, epochs=1,
                         batch_size=16, max_rows=32, dtype="float64", lr=1e-2)
    train(config, tmp_path, progress=False)
    argv = ["evaluate", str(tmp_path), "--num-samples", "20", "--khat-samples", "100"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)["pointwise_khat"]
    assert printed == json.loads((tmp_path / "evaluation.json").read_text())["pointwise_khat"]
    assert printed["num_samples"] == 100 and printed["histogram"] == "khat.png"
    assert 0 <= printed["share_ge_0.7"] <= printed["share_ge_0.5"] <= 1
    assert printed["median"] <= printed["max"]
    assert (tmp_path / "khat.png").stat().st_size > 0
    assert main([*argv[:-1], "10"]) == 2
    assert "--khat-samples: must be 0 (skip) or >= 25, got 10" in capsys.readouterr().err
    with pytest.raises(ValueError, match="khat_samples"):
        evaluation.evaluate_run(tmp_path, num_samples=5, khat_samples=24)
