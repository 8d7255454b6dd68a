r"""Evaluating deep latent Gaussian models the way the papers do.

- :func:`test_log_likelihood`: :math:`\mathcal L_{5000}`, importance sampling with the guide
  as proposal (Burda et al. 2015), chunked (:func:`~pyro_dgm.inference.log_marginal_likelihood`);
- :func:`quadrature_log_likelihood`: the exact :math:`\log p(x)` of a one-layer model with a
  1- or 2-dimensional latent by a Riemann sum over a grid in :math:`z` (a check of the above);
- :func:`test_elbo`: the ELBO per image;
- :func:`active_units`: unit :math:`u` of layer :math:`l` is active when
  :math:`\operatorname{Cov}_x\big(\mathbb E_{q(z_l\mid x)}[z_{l,u}]\big) > 10^{-2}`
  (Burda et al. 2015);
- :func:`bits_per_dim`: per stochastic layer
  :math:`\mathbb E_q[\log q(z_l\mid\cdot) - \log p(z_l\mid z_{l+1})]/(d \ln 2)`, the bits per
  data dimension the layer stores (the compression view of Gregor et al. 2016), plus the
  reconstruction term; they add up to :math:`-\mathrm{ELBO}/(d\ln 2)`;
- :func:`impute`: fill in missing pixels given the observed ones (Rezende et al. 2014,
  Sec. 6.3): iterate :math:`z \sim q(z\mid \tilde x)`, :math:`\tilde x_{mis} \leftarrow
  \mathbb E[x_{mis}\mid z]`, then a self-normalized importance-sampling estimate of
  :math:`\mathbb E[x_{mis}\mid x_{obs}]` with weights :math:`p(x_{obs}, z)/q(z\mid\tilde x)`;
- :func:`pointwise_khat`: can the recognition model be trusted, image by image? The PSIS
  :math:`\hat k` (Yao et al. 2018; Vehtari et al. 2024) of the importance ratios
  :math:`\log p(x_n, z_s) - \log q(z_s\mid x_n)`, :math:`z_s \sim q(z\mid x_n)`, per test image;
  :math:`\hat k \ge 0.7`: the guide misses that image's posterior, and importance sampling
  with it (:math:`\mathcal L_{5000}`, imputation) is unreliable there;
- :func:`save_image_grid`, :func:`evaluate_run` (what ``pyro-dgm evaluate DIR`` writes).

Example::

    >>> model, guide, config, state = load_trained("runs/iwae5")
    >>> x_test = load_data(config, split="test")
    >>> ll = test_log_likelihood(model, guide, x_test, num_samples=5000)
    >>> float(ll.log_likelihood.mean()), active_units(model, guide, x_test)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch

from pyro_dgm._validation import check_int
from pyro_dgm.dlgm.checkpoint import load_trained
from pyro_dgm.dlgm.config import check_device, load_data
from pyro_dgm.inference import LogLikelihood, log_marginal_likelihood, psis_smooth
from pyro_dgm.models.dlgm import DLGM

__all__ = ["active_units", "bits_per_dim", "evaluate_run", "impute", "khat_histogram",
           "pointwise_khat", "quadrature_log_likelihood", "save_image_grid", "test_elbo",
           "test_log_likelihood"]

_PARTICLES = "num_particles_vectorized"


def test_log_likelihood(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, *,
                        num_samples: int = 5000, chunk_size: int = 250) -> LogLikelihood:
    """:math:`\\mathcal L_S` per row of ``x`` (guide proposal, chunks of ``chunk_size``)."""
    return log_marginal_likelihood(model, guide, x, num_samples=num_samples,
                                   chunk_size=chunk_size, max_plate_nesting=1)


def quadrature_log_likelihood(model: DLGM, x: torch.Tensor, *, bound: float = 6.0,
                              num_points: int = 401) -> torch.Tensor:
    r""":math:`\log p(x_n) = \log\int p(z)p(x_n\mid z)\,dz` per row, by a grid on
    :math:`[-b, b]^q` (one stochastic layer with :math:`q \le 2`)."""
    if model.num_layers != 1 or model.latent_dims[0] > 2:
        raise ValueError("quadrature needs one stochastic layer of dimension 1 or 2, got "
                         f"latent_dims={model.latent_dims}")
    q = model.latent_dims[0]
    axis = torch.linspace(-bound, bound, num_points, dtype=x.dtype, device=x.device)
    grid = torch.cartesian_prod(*([axis] * q)).reshape(-1, q)
    log_cell = q * math.log(2 * bound / (num_points - 1))
    with torch.no_grad():
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(-1)
        out = []
        for chunk in grid.split(4096):
            fn = model.observation(chunk.unsqueeze(1))  # (G, 1) batch against (N, d) rows
            out.append(fn.log_prob(x))
        log_lik = torch.cat(out)  # (G, N)
        return torch.logsumexp(log_lik + log_prior.unsqueeze(-1), 0) + log_cell


def test_elbo(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, *,
              num_particles: int = 10) -> float:
    """ELBO per row of ``x`` (nats), ``num_particles`` vectorized samples."""
    elbo = pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                                 max_plate_nesting=1)
    with torch.no_grad():
        return -float(elbo.differentiable_loss(model, guide, x)) / len(x)


def _traces(model, guide, x, num_samples, **kwargs):
    """Guide and replayed model traces with ``num_samples`` particles at dim -2."""
    with torch.no_grad(), pyro.plate(_PARTICLES, num_samples, dim=-2):
        gtr = poutine.trace(guide).get_trace(x, **kwargs)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, **kwargs)
    gtr.compute_log_prob()
    mtr.compute_log_prob()
    return gtr, mtr


def active_units(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, *, num_samples: int = 500,
                 threshold: float = 1e-2) -> dict[str, int]:
    r"""Active units per layer: :math:`\mathrm{Var}_x(\mathbb E_q[z_u]) > ` ``threshold``.

    :math:`\mathbb E_q` averages, over ``num_samples`` guide draws, each site's conditional
    mean given the draws of the layers below (Rao-Blackwellized: exact for the first layer of
    a Gaussian guide), or the draws themselves when the distribution has no ``mean`` (flows).
    The Monte Carlo noise adds about :math:`\sigma^2/S` to the variance, so keep
    ``num_samples`` large when the guide cannot give means.
    """
    gtr, _ = _traces(model, guide, x, num_samples)
    result = {}
    for name in model.site_names:
        site = gtr.nodes[name]
        try:
            values = site["fn"].mean.expand_as(site["value"])
        except NotImplementedError:
            values = site["value"]
        means = values.mean(0)  # (N, d)
        result[name] = int((means.var(0, unbiased=True) > threshold).sum())
    return result


def bits_per_dim(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, *,
                 num_samples: int = 100) -> dict[str, float]:
    """KL term of each stochastic layer and the reconstruction term in bits per dimension."""
    gtr, mtr = _traces(model, guide, x, num_samples)
    scale = math.log(2) * model.obs_dim * len(x) * num_samples
    result = {}
    for name in model.site_names:
        kl = gtr.nodes[name]["log_prob"].sum() - mtr.nodes[name]["log_prob"].sum()
        result[name] = float(kl) / scale
    result["reconstruction"] = -float(mtr.nodes["x"]["log_prob"].sum()) / scale
    return result


def impute(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, observed: torch.Tensor, *,
           num_iterations: int = 20, num_samples: int = 200,
           fill: torch.Tensor | None = None) -> dict:
    """Impute ``x`` where ``observed`` is ``False``; errors against the true ``x`` there.

    :param observed: boolean mask like ``x`` (``True``: the pixel is seen).
    :param fill: initial value of the missing pixels per column (default: 0.5).
    :return: ``imputed`` (``x`` with the missing pixels replaced by their estimated means),
        ``mae``/``rmse`` on the missing pixels and ``baseline_mae`` of ``fill``.
    """
    if observed.shape != x.shape or observed.dtype != torch.bool:
        raise ValueError(f"observed must be a boolean mask of shape {tuple(x.shape)}")
    check_int("num_iterations", num_iterations, minimum=0)
    fill = torch.full_like(x[0], 0.5) if fill is None else fill.to(x)
    start = torch.where(observed, x, fill.expand_as(x))
    current = start

    def mean_of(z1):
        eta = model.decode(z1)
        return torch.sigmoid(eta) if model.likelihood == "bernoulli" else eta

    with torch.no_grad():
        for _ in range(num_iterations):
            with poutine.block():
                z1 = poutine.trace(guide).get_trace(current).nodes["z1"]["value"]
            current = torch.where(observed, x, mean_of(z1))
        gtr, mtr = _traces(model, guide, current, num_samples, obs_mask=observed)
        log_w = sum(mtr.nodes[n]["log_prob"] for n in [*model.site_names, "x"]) \
            - sum(gtr.nodes[n]["log_prob"] for n in model.site_names)  # (S, N)
        weights = torch.softmax(log_w, 0).unsqueeze(-1)
        estimate = (weights * mean_of(gtr.nodes["z1"]["value"])).sum(0)
        imputed = torch.where(observed, x, estimate)
    missing = ~observed
    err = (imputed - x)[missing]
    return {"imputed": imputed, "start": start, "mae": float(err.abs().mean()),
            "rmse": float(err.pow(2).mean().sqrt()),
            "baseline_mae": float((start - x)[missing].abs().mean())}


def pointwise_khat(model: DLGM, guide: torch.nn.Module, x: torch.Tensor, *,
                   num_samples: int = 1000, chunk_size: int = 250) -> torch.Tensor:
    r"""PSIS :math:`\hat k` of each row's importance ratios under the recognition model.

    For every row :math:`x_n`, :math:`K` = ``num_samples`` draws :math:`z_s \sim q(z\mid x_n)`
    (all stochastic layers) give :math:`\log r_{s,n} = \log p(x_n, z_s) - \log q(z_s\mid x_n)`,
    whose Pareto-smoothed tail shape (:func:`~pyro_dgm.inference.psis_smooth`) is
    :math:`\hat k_n`: below 0.5 the guide covers that image's posterior, above 0.7 importance
    sampling with it is not reliable (Yao, Vehtari, Simpson & Gelman 2018; Vehtari et al.
    2024, JMLR 25(72); for :math:`K` draws the threshold is
    :math:`\min(1 - 1/\log_{10} K, 0.7)`). Ratios equal to within rounding (the guide is the
    posterior) have no tail: :math:`\hat k_n = -\infty`.

    Draws are taken ``chunk_size`` at a time; the ``(K, N)`` ratios are kept.

    :return: :math:`\hat k`, shape ``(N,)``, on ``x``'s device in ``x``'s dtype.
    :raises ValueError: ``num_samples`` < 25 (the tail fit needs 5 draws of 20 %) or
        ``chunk_size`` < 1.

    Example::

        >>> khat = pointwise_khat(model, guide, x_test, num_samples=1000)
        >>> float((khat >= 0.7).double().mean())  # share of images the guide misses
    """
    num_samples = check_int("num_samples", num_samples, minimum=25)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    log_p, log_q = [], []
    for start in range(0, num_samples, chunk_size):
        gtr, mtr = _traces(model, guide, x, min(chunk_size, num_samples - start))
        log_p.append(sum(mtr.nodes[n]["log_prob"] for n in [*model.site_names, "x"]))
        log_q.append(sum(gtr.nodes[n]["log_prob"] for n in model.site_names))
        del gtr, mtr
    log_p, log_q = torch.cat(log_p), torch.cat(log_q)  # (K, N)
    ratios = log_p - log_q
    # spread within rounding of the terms: no tail (a fit to rounding noise means nothing)
    tol = 1024 * torch.finfo(ratios.dtype).eps * (1 + log_p.abs().amax(0) + log_q.abs().amax(0))
    flat = (ratios.amax(0) - ratios.amin(0)) <= tol
    khat = torch.full((ratios.shape[1],), -math.inf, dtype=ratios.dtype, device=ratios.device)
    for n in torch.nonzero(~flat).flatten().tolist():
        khat[n] = psis_smooth(ratios[:, n])[1]
    return khat.to(x.dtype)


def khat_histogram(khat: torch.Tensor, path: str | os.PathLike, *,
                   title: str | None = None) -> None:
    r"""Save a histogram of per-image :math:`\hat k` with the 0.5 and 0.7 thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = khat.detach().cpu().double().clamp(-0.5, 1.5).numpy()  # +-inf at the ends
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=40, range=(-0.5, 1.5), color="0.4")
    for threshold, style in ((0.5, ":"), (0.7, "--")):
        ax.axvline(threshold, color="C3", linestyle=style, label=f"k-hat = {threshold}")
    ax.set_xlabel("PSIS k-hat per test image (clipped to [-0.5, 1.5])")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, ncols: int = 8,
                    shape: tuple[int, int] = (8, 8), title: str | None = None) -> None:
    """Save rows of ``images`` (flattened, values in [0, 1]) as a PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().cpu().double().reshape(-1, *shape)
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8, nrows * 0.8 + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i].numpy(), cmap="gray_r", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _khat_summary(khat: torch.Tensor, num_samples: int, path: Path) -> dict:
    khat_histogram(khat, path, title=f"{len(khat)} test images, {num_samples} draws each")
    share = {f"share_ge_{t}": float((khat >= t).double().mean()) for t in (0.7, 0.5)}
    return {"num_samples": num_samples, **share, "median": float(khat.median()),
            "max": float(khat.max()), "histogram": path.name}


def evaluate_run(directory: str | os.PathLike, *, num_samples: int = 5000,
                 chunk_size: int = 250, device: str | None = None, seed: int = 0,
                 checkpoint: str | None = None, khat_samples: int = 1000) -> dict:
    r"""Evaluate the newest checkpoint of a ``pyro-dgm train`` run; writes
    ``evaluation.json``, ``samples.png``, ``imputation.png`` and ``khat.png`` into
    ``directory``.

    :param checkpoint: a checkpoint file of ``directory`` to evaluate instead of the newest.
    :param khat_samples: guide draws per test image for :func:`pointwise_khat` (0: skip);
        the result's ``pointwise_khat`` gives the share of images with
        :math:`\hat k \ge 0.7` (and :math:`\ge 0.5`), the median and the maximum.
    :raises ValueError: bad arguments or device; a checkpoint that is damaged, does not load
        or does not match ``config.json`` (:func:`~pyro_dgm.dlgm.load_checkpoint`).
    """
    directory = Path(directory)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    check_int("chunk_size", chunk_size, minimum=1)
    check_int("seed", seed, minimum=0)
    if check_int("khat_samples", khat_samples, minimum=0) and khat_samples < 25:
        raise ValueError(f"khat_samples: must be 0 (skip) or >= 25, got {khat_samples}")
    check_device("device", device)
    model, guide, config, state = load_trained(directory, map_location=device,
                                               checkpoint=checkpoint)
    pyro.set_rng_seed(seed)
    x_test = load_data(config, None, "test")
    x_train = load_data(config, 0, "train")
    with pyro.settings.context(module_local_params=True):
        model.check_data(x_test, "test data")
        ll = test_log_likelihood(model, guide, x_test, num_samples=num_samples,
                                 chunk_size=chunk_size)
        result = {
            "epoch": int(state["epoch"]), "num_samples": num_samples,
            "test_log_likelihood": float(ll.log_likelihood.mean()),
            "test_log_likelihood_se": float(ll.log_likelihood.std() / len(x_test) ** 0.5),
            "min_ess": float(ll.ess.min()),
            "test_elbo": test_elbo(model, guide, x_test),
            "active_units": active_units(model, guide, x_test),
            "bits_per_dim": bits_per_dim(model, guide, x_test),
        }
        if khat_samples:
            result["pointwise_khat"] = _khat_summary(
                pointwise_khat(model, guide, x_test, num_samples=khat_samples,
                               chunk_size=chunk_size), khat_samples, directory / "khat.png")
        with torch.no_grad():
            tr = poutine.trace(model).get_trace(num_data=64)
            z1 = tr.nodes["z1"]["value"]
            eta = model.decode(z1)
            mean = torch.sigmoid(eta) if model.likelihood == "bernoulli" else eta
        if model.likelihood == "bernoulli":
            save_image_grid(mean, directory / "samples.png",
                            title="model samples (pixel probabilities)")
            observed = torch.ones_like(x_test, dtype=torch.bool)
            observed[:, model.obs_dim // 2:] = False  # bottom half of the image missing
            imp = impute(model, guide, x_test, observed, fill=x_train.mean(0))
            result["imputation"] = {k: imp[k] for k in ("mae", "rmse", "baseline_mae")}
            result["imputation"]["missing"] = "bottom half of each test image"
            rows = torch.cat([x_test[:8], torch.where(observed[:8], x_test[:8], 0.5),
                              imp["imputed"][:8]])
            save_image_grid(rows, directory / "imputation.png",
                            title="test images / bottom half hidden / imputed")
    (directory / "evaluation.json").write_text(json.dumps(result, indent=1))
    return result
