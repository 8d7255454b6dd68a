r"""A Bayesian multilayer perceptron as a Pyro program, for SVI and MCMC alike.

.. math::

    W_l \sim \mathcal N(0, s^2 I),\quad b_l \sim \mathcal N(0, s^2 I),\qquad
    h_0 = x_n,\quad h_l = \phi(h_{l-1} W_l + b_l),\quad f(x_n) = h_{L-1} W_L + b_L,

    y_n \sim \mathcal N(f(x_n), \sigma^2)\ \ (\sigma \sim \mathrm{HalfNormal}(s_\sigma)
    \text{ or fixed}) \qquad\text{or}\qquad y_n \sim \mathrm{Categorical}(\operatorname{softmax}
    f(x_n)).

Sample sites: ``w0``, ``b0``, ..., ``w{L}``, ``b{L}`` (``w_l`` of shape ``(fan_in, fan_out)``),
``sigma`` (Gaussian likelihood without a fixed ``noise_scale``), and the observed ``y``
in the plate ``"data"`` (dim -1).

Unlike ``PyroModule[nn.Linear]`` with ``PyroSample`` weights, which calls ``F.linear`` and
fails once a weight carries batch dimensions, the layers here are ``matmul`` of the inputs
with weights of any batch shape. A global site sampled under a vectorized-particle plate
(``Trace_ELBO(vectorize_particles=True)``) or ``Predictive(parallel=True)`` has shape
``(S, 1, fan_in, fan_out)``, the ``1`` standing for the data plate; the model drops that
dimension and computes outputs of shape ``(S, N, out)``, so SVI with vectorized particles,
NUTS/HMC, MH and parallel ``Predictive`` all run on the same model.

Example::

    >>> model = BayesianMLP(1, [10], 1, likelihood="gaussian")
    >>> mcmc = MCMC(NUTS(model), num_samples=500, warmup_steps=500); mcmc.run(x, y)
    >>> mean = model.network(x_grid, mcmc.get_samples())       # (S, N_grid, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_dgm._shared import data_plate
from pyro_dgm._validation import check_choice, check_finite_tensor, check_int, check_positive

__all__ = ["BayesianMLP"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def _drop_data_dim(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Remove the size-1 batch dimension that stands for the data plate.

    A global site's value has batch shape ``()`` (unbatched), ``(S, 1)`` (under a plate at
    dim -2: vectorized particles, or ``Predictive`` padding), or ``(S,)`` (``Predictive``
    does not pad values whose event has as many dims as the model has plates); the last
    two both mean ``S`` draws.
    """
    batch = value.shape[:value.dim() - event_dim]
    if len(batch) >= 2:
        if batch[-1] != 1:
            raise ValueError(f"global site of shape {tuple(value.shape)} is not broadcastable "
                             "against the data plate at dim -1")
        value = value.squeeze(len(batch) - 1)
    return value


class BayesianMLP(PyroModule):
    r"""Bayesian MLP with Gaussian weight priors.

    :param in_dim: input features; :param hidden_dims: hidden layer widths (may be empty);
    :param out_dim: outputs (classes for ``"categorical"``).
    :param likelihood: ``"gaussian"`` (``y`` of shape ``(N,)`` when ``out_dim == 1``, else
        ``(N, out_dim)``) or ``"categorical"`` (integer labels ``(N,)``).
    :param activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.
    :param prior_scale: prior sd :math:`s` of every weight and bias.
    :param noise_scale: fixed Gaussian noise sd, or ``None`` to sample ``sigma``.
    :param noise_prior_scale: :math:`s_\sigma` of the ``HalfNormal`` noise prior.

    Call ``model(x, y)``; ``model(x)`` samples ``y`` from the (prior or posterior)
    predictive. Minibatches: ``subsample=idx`` (and ``num_data=N`` when ``x``/``y`` are
    already the batch), as :func:`~pyro_dgm.models.data_plate`.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int,
                 likelihood: str = "gaussian", *, activation: str = "tanh",
                 prior_scale: float = 1.0, noise_scale: float | None = None,
                 noise_prior_scale: float = 1.0, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_dim = check_int("in_dim", in_dim, minimum=1)
        self.hidden_dims = [check_int("hidden_dims", h, minimum=1) for h in hidden_dims]
        self.out_dim = check_int("out_dim", out_dim, minimum=1)
        self.likelihood = check_choice("likelihood", likelihood, ["gaussian", "categorical"])
        if likelihood == "categorical" and out_dim < 2:
            raise ValueError("categorical likelihood needs out_dim >= 2 classes")
        self.activation = check_choice("activation", activation, _ACTIVATIONS)
        self.prior_scale = check_positive("prior_scale", prior_scale)
        self.noise_scale = None if noise_scale is None else check_positive("noise_scale",
                                                                           noise_scale)
        self.noise_prior_scale = check_positive("noise_prior_scale", noise_prior_scale)
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype))
        dims = [self.in_dim, *self.hidden_dims, self.out_dim]
        self.layer_shapes = list(zip(dims[:-1], dims[1:], strict=True))

    @property
    def num_weights(self) -> int:
        """Number of weights and biases."""
        return sum(i * o + o for i, o in self.layer_shapes)

    def network(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Outputs ``(*S, N, out_dim)`` for weights ``params["w{l}"]`` of shape
        ``(*S, fan_in, fan_out)`` and biases ``(*S, fan_out)`` (e.g. ``mcmc.get_samples()``;
        no plate padding)."""
        act = _ACTIVATIONS[self.activation]
        h = x
        for layer in range(len(self.layer_shapes)):
            w, b = params[f"w{layer}"], params[f"b{layer}"]
            h = torch.matmul(h, w) + b.unsqueeze(-2)
            if layer < len(self.layer_shapes) - 1:
                h = act(h)
        return h

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                subsample: torch.Tensor | None = None,
                num_data: int | None = None) -> torch.Tensor:
        if self._anchor.device != x.device or x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be a ({'N'}, {self.in_dim}) tensor on "
                             f"{self._anchor.device}, got {tuple(x.shape)} on {x.device}")
        zero = self._anchor.to(x.dtype)
        scale = zero + self.prior_scale
        params = {}
        for layer, (fan_in, fan_out) in enumerate(self.layer_shapes):
            w = pyro.sample(f"w{layer}", dist.Normal(zero, scale).expand([fan_in, fan_out])
                            .to_event(2))
            b = pyro.sample(f"b{layer}", dist.Normal(zero, scale).expand([fan_out])
                            .to_event(1))
            params[f"w{layer}"] = _drop_data_dim(w, 2)
            params[f"b{layer}"] = _drop_data_dim(b, 1)
        sigma = None
        if self.likelihood == "gaussian":
            if self.noise_scale is None:
                sigma = pyro.sample("sigma", dist.HalfNormal(zero + self.noise_prior_scale))
                sigma = _drop_data_dim(sigma, 0)
            else:
                sigma = zero + self.noise_scale
        if y is not None and subsample is not None and num_data is None:
            y = y.index_select(0, subsample.to(y.device))
        with data_plate(x, subsample=subsample, num_data=num_data) as batch:
            out = self.network(batch, params)
            if self.likelihood == "categorical":
                pyro.sample("y", dist.Categorical(logits=out), obs=y)
            elif self.out_dim == 1:
                pyro.sample("y", dist.Normal(out.squeeze(-1), sigma[..., None]), obs=y)
            else:
                pyro.sample("y", dist.Normal(out, sigma[..., None, None]).to_event(1), obs=y)
        return out

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate data once, outside any hot loop (shapes, finiteness, labels)."""
        check_finite_tensor("x", x)
        if y is None:
            return
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        if self.likelihood == "categorical":
            if y.dim() != 1 or y.is_floating_point() or bool(((y < 0) | (y >= self.out_dim))
                                                             .any()):
                raise ValueError(f"y must be integer labels in [0, {self.out_dim})")
        else:
            check_finite_tensor("y", y)
            want = (x.shape[0],) if self.out_dim == 1 else (x.shape[0], self.out_dim)
            if tuple(y.shape) != want:
                raise ValueError(f"y must have shape {want}, got {tuple(y.shape)}")
