r"""Binary restricted Boltzmann machine: an energy model with exact answers when small.

.. math::

    E(v, h) = -b^\top v - c^\top h - v^\top W h, \qquad
    p(v, h) = e^{-E(v, h)} / Z, \qquad v \in \{0,1\}^{n_v},\ h \in \{0,1\}^{n_h}.

Summing out the hidden layer gives the *free energy*

.. math::

    F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + v^\top W_{:,j}), \qquad
    p(v) = e^{-F(v)} / Z,

and the layers are conditionally independent given each other:
:math:`p(h_j = 1 \mid v) = \sigma(c_j + v^\top W_{:,j})`,
:math:`p(v_i = 1 \mid h) = \sigma(b_i + W_{i,:} h)`, which makes block Gibbs sampling
(all of ``h``, then all of ``v``) cheap. Summing out the visible layer instead gives
:math:`F_h(h) = -c^\top h - \sum_i \operatorname{softplus}(b_i + W_{i,:} h)`, so

.. math::

    \log Z = \log \sum_h \exp\big(-F_h(h)\big) = \log \sum_v \exp\big(-F(v)\big),

which :meth:`RBM.log_partition` evaluates exactly by enumerating the smaller layer
(:math:`2^{\min(n_v, n_h)}` states, chunked, in log space). Training by contrastive
divergence (CD-k, Hinton 2002) and persistent CD (Tieleman 2008) is in
:mod:`pyro_dgm.models.rbm_training`; Salakhutdinov & Murray (2008) compare them on MNIST
with AIS estimates of :math:`\log Z`.

States are enumerated in little-endian order: state ``k`` has unit ``i`` on iff bit ``i``
of ``k`` is set (:func:`binary_states`), so ``v @ 2 ** arange(n)`` indexes a state.

Example::

    >>> x = pyro_dgm.data.load_digits(max_rows=500)              # (500, 64) binary
    >>> rbm = RBM(64, 12).init_visible_bias(x)
    >>> trainer = rbm.fit(x, method="pcd", k=1, epochs=50, batch_size=50)
    >>> rbm.log_prob(x).mean()            # exact: enumerates the 2**12 hidden states
    >>> v = rbm.sample(1000, num_steps=500)                     # (1000, 64) Gibbs draws
"""

from __future__ import annotations

from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dgm._shared import data_plate
from pyro_dgm._validation import check_choice, check_int, check_positive
from pyro_dgm.models.rbm_training import CDTrainer

__all__ = ["MAX_ENUMERATE_UNITS", "RBM", "binary_states"]

#: Largest layer :meth:`RBM.log_partition` enumerates by default (2**20 states).
MAX_ENUMERATE_UNITS = 20
# Elements (states x units of the other layer) evaluated at once while enumerating.
_CHUNK_ELEMENTS = 1 << 22


def binary_states(num_units: int, start: int = 0, stop: int | None = None, *,
                  dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """States ``start .. stop - 1`` of ``num_units`` binary units as a ``(count, num_units)``
    tensor; state ``k`` has unit ``i`` on iff bit ``i`` of ``k`` is set."""
    num_units = check_int("num_units", num_units, minimum=0, maximum=62)
    stop = 1 << num_units if stop is None else stop
    index = torch.arange(start, stop, device=device)
    bits = torch.arange(num_units, device=device)
    return ((index.unsqueeze(-1) >> bits) & 1).to(dtype or torch.get_default_dtype())


class RBM(nn.Module):
    r"""Binary RBM with energy :math:`E(v, h) = -b^\top v - c^\top h - v^\top W h`.

    Parameters ``W`` (``n_visible``, ``n_hidden``), ``b`` (``n_visible``,) and ``c``
    (``n_hidden``,); ``W`` starts at :math:`\mathcal N(0, \text{init_scale}^2)`, the biases
    at 0. Every method follows the parameters' device and dtype (``rbm.to(...)``), accepts
    any leading batch shape (many chains at once) and, where it draws, an optional
    ``torch.Generator`` on that device.

    :param n_visible: visible units :math:`n_v \ge 1`.
    :param n_hidden: hidden units :math:`n_h \ge 1`.
    :param init_scale: standard deviation of the initial weights (``>= 0``).
    :param generator: random source for the initial weights.
    """

    def __init__(self, n_visible: int, n_hidden: int, *, init_scale: float = 0.01,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        self.n_visible = check_int("n_visible", n_visible, minimum=1)
        self.n_hidden = check_int("n_hidden", n_hidden, minimum=1)
        init_scale = check_positive("init_scale", init_scale, strict=False)
        kw = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        W = torch.randn(self.n_visible, self.n_hidden, generator=generator, **kw) * init_scale
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(torch.zeros(self.n_visible, **kw))
        self.c = nn.Parameter(torch.zeros(self.n_hidden, **kw))

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}"

    # ---------------------------------------------------------------- input checks
    def check_visible(self, v, name: str = "v", *, binary: bool = True) -> torch.Tensor:
        """Return ``v`` as a ``(..., n_visible)`` tensor of the parameters' dtype and
        device, or raise ``ValueError`` naming ``name`` (wrong width, non-binary values).
        The binary check syncs with the device: use it on data, never per Gibbs step."""
        if not torch.is_tensor(v):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() == 0 or v.shape[-1] != self.n_visible:
            raise ValueError(f"{name} must have {self.n_visible} columns (its last "
                             f"dimension), got shape {tuple(v.shape)}")
        v = v.to(dtype=self.W.dtype, device=self.W.device)
        if binary:
            bad = (v != 0) & (v != 1)
            if bool(bad.any()):
                raise ValueError(f"{name} must be binary (0 or 1): found "
                                 f"{int(bad.sum())} other value(s), e.g. {float(v[bad][0])}")
        return v

    @torch.no_grad()
    def init_visible_bias(self, data: torch.Tensor, eps: float = 1e-3) -> RBM:
        r"""Set :math:`b_i = \log(\bar v_i / (1 - \bar v_i))` from the data's pixel means
        (clamped to ``[eps, 1 - eps]``), so that with ``W = 0`` the RBM is the best
        independent-pixel model (Hinton 2010, *A practical guide to training RBMs*, §8.1).
        Returns ``self``."""
        data = self.check_visible(data, "data")
        mean = data.reshape(-1, self.n_visible).mean(0).clamp(eps, 1 - eps)
        self.b.copy_(torch.logit(mean))
        return self

    # ---------------------------------------------------------------- energies
    def energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """:math:`E(v, h)` for ``(..., n_visible)`` and ``(..., n_hidden)`` (broadcast)."""
        return -(v @ self.b) - (h @ self.c) - ((v @ self.W) * h).sum(-1)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        r""":math:`F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + v^\top W_{:,j})`;
        ``p(v) = exp(-F(v)) / Z``. Shape: ``v.shape[:-1]``."""
        return -(v @ self.b) - F.softplus(v @ self.W + self.c).sum(-1)

    def hidden_free_energy(self, h: torch.Tensor) -> torch.Tensor:
        r""":math:`F_h(h) = -c^\top h - \sum_i \operatorname{softplus}(b_i + W_{i,:} h)`;
        ``p(h) = exp(-F_h(h)) / Z``."""
        return -(h @ self.c) - F.softplus(h @ self.W.T + self.b).sum(-1)

    # ---------------------------------------------------------------- conditionals
    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        r""":math:`p(h_j = 1 \mid v) = \sigma(c_j + v^\top W_{:,j})`, shape ``(..., n_hidden)``."""
        return torch.sigmoid(v @ self.W + self.c)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        r""":math:`p(v_i = 1 \mid h) = \sigma(b_i + W_{i,:} h)`, shape ``(..., n_visible)``."""
        return torch.sigmoid(h @ self.W.T + self.b)

    def sample_hidden(self, v: torch.Tensor, generator: torch.Generator | None = None):
        """Draw ``h ~ p(h | v)`` for every row of ``v`` at once."""
        return torch.bernoulli(self.hidden_probs(v), generator=generator)

    def sample_visible(self, h: torch.Tensor, generator: torch.Generator | None = None):
        """Draw ``v ~ p(v | h)`` for every row of ``h`` at once."""
        return torch.bernoulli(self.visible_probs(h), generator=generator)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, num_steps: int = 1, *,
              generator: torch.Generator | None = None):
        """Run ``num_steps`` block-Gibbs steps (``h ~ p(h|v)``, then ``v ~ p(v|h)``) on all
        chains ``v`` (``(..., n_visible)``) at once; returns the final ``(v, h)``, where ``h``
        is the hidden state ``v`` was drawn from (a joint draw of ``(v, h)``). No host sync."""
        num_steps = check_int("num_steps", num_steps, minimum=1)
        for _ in range(num_steps):
            h = self.sample_hidden(v, generator)
            v = self.sample_visible(h, generator)
        return v, h

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int = 1000, *,
               init: torch.Tensor | None = None, generator: torch.Generator | None = None,
               return_hidden: bool = False):
        """Final states of ``num_samples`` independent block-Gibbs chains after
        ``num_steps`` steps each, started from ``init`` (``(num_samples, n_visible)``
        binary) or from uniformly random states. Returns ``v`` or ``(v, h)``."""
        num_samples = check_int("num_samples", num_samples, minimum=1)
        if init is None:
            half = self.b.new_full((num_samples, self.n_visible), 0.5)
            init = torch.bernoulli(half, generator=generator)
        else:
            init = self.check_visible(init, "init")
            if init.shape[:-1] != (num_samples,):
                raise ValueError(f"init must have shape ({num_samples}, {self.n_visible}), "
                                 f"got {tuple(init.shape)}")
        v, h = self.gibbs(init, num_steps, generator=generator)
        return (v, h) if return_hidden else v

    # ---------------------------------------------------------------- exact answers
    def log_partition(self, layer: str = "auto", *,
                      max_units: int = MAX_ENUMERATE_UNITS) -> torch.Tensor:
        r"""Exact :math:`\log Z` by enumerating all states of one layer.

        ``layer="hidden"``: :math:`\log Z = \operatorname{logsumexp}_h(-F_h(h))`;
        ``"visible"``: :math:`\operatorname{logsumexp}_v(-F(v))`; ``"auto"`` picks the
        smaller layer. The states are visited in chunks and combined in log space, so memory
        stays bounded; the result is differentiable in the parameters.

        :raises ValueError: if the chosen layer (for ``"auto"``: both layers) has more
            than ``max_units`` units.
        """
        check_choice("layer", layer, ("auto", "hidden", "visible"))
        max_units = check_int("max_units", max_units, minimum=1, maximum=40)
        if layer == "auto":
            if min(self.n_visible, self.n_hidden) > max_units:
                raise ValueError(
                    f"cannot compute log Z exactly: both layers are too large to enumerate "
                    f"(n_visible={self.n_visible}, n_hidden={self.n_hidden}; at most "
                    f"max_units={max_units} units in one layer). Estimate it instead, "
                    f"e.g. by annealed importance sampling")
            layer = "hidden" if self.n_hidden <= self.n_visible else "visible"
        units, other = ((self.n_hidden, self.n_visible) if layer == "hidden"
                        else (self.n_visible, self.n_hidden))
        if units > max_units:
            raise ValueError(f"cannot enumerate the {layer} layer: n_{layer}={units} > "
                             f"max_units={max_units}")
        neg_free = (lambda s: -self.hidden_free_energy(s)) if layer == "hidden" else (
            lambda s: -self.free_energy(s))
        total = 1 << units
        chunk = 1 << max(0, min(units, (_CHUNK_ELEMENTS // max(other, units)).bit_length() - 1))
        parts = [torch.logsumexp(neg_free(binary_states(
                    units, start, min(start + chunk, total), dtype=self.W.dtype,
                    device=self.W.device)), 0)
                 for start in range(0, total, chunk)]
        return torch.logsumexp(torch.stack(parts), 0)

    def log_prob(self, v: torch.Tensor, *, log_z: torch.Tensor | None = None,
                 **log_partition_kwargs) -> torch.Tensor:
        r"""Exact :math:`\log p(v) = -F(v) - \log Z` for binary ``(..., n_visible)`` rows.

        Pass ``log_z`` to reuse a :meth:`log_partition` value; otherwise it is computed
        (``log_partition_kwargs`` go to it)."""
        v = self.check_visible(v, "v")
        if log_z is None:
            log_z = self.log_partition(**log_partition_kwargs)
        return -self.free_energy(v) - log_z

    # ---------------------------------------------------------------- Pyro program
    def model(self, v: torch.Tensor | None = None, *, marginalize_hidden: bool = False):
        r"""The RBM as a Pyro program over scalar binary sites, for generic samplers.

        Sites ``v_0 .. v_{n_v-1}`` and ``h_0 .. h_{n_h-1}``, each ``Bernoulli(1/2)``, and
        ``pyro.factor("energy", -E(v, h))``: the log joint density is
        :math:`-E(v, h) - (n_v + n_h) \log 2`, i.e. the RBM up to a constant. With
        ``marginalize_hidden=True`` there are no ``h`` sites and the factor is
        ``"free_energy"`` :math:`= -F(v)`. Passing ``v`` (``(n_visible,)``, or
        ``(N, n_visible)`` under a plate ``"data"``) observes the visible sites, leaving
        the posterior :math:`p(h \mid v)`.

        Every latent site is a scalar with two values, so a Gibbs kernel that draws a
        discrete site exactly from its full conditional (by evaluating the joint density
        at both values, e.g. ``pyro_dgm.inference.Gibbs(rbm.model)``) is an exact
        single-site Gibbs sampler for the RBM; the coupling lives in the single factor, so
        no kernel may update the ``v_i`` (or ``h_j``) as if conditionally independent of
        each other unless it exploits the bipartite structure (:meth:`gibbs` does). The
        sites broadcast against outer batch dimensions (vectorized chains, enumeration).
        Returns the visible vector ``(..., n_visible)``.
        """
        half = self.b.new_tensor(0.5)
        if v is not None:
            v = self.check_visible(v, "v", binary=False)  # values: Pyro's validation
            if v.dim() > 2:
                raise ValueError(f"v must have shape (n_visible,) or (N, n_visible), got "
                                 f"{tuple(v.shape)}")
        plate = data_plate(v) if v is not None and v.dim() == 2 else nullcontext()
        with plate:
            vis = [pyro.sample(f"v_{i}", dist.Bernoulli(half),
                               obs=None if v is None else v[..., i])
                   for i in range(self.n_visible)]
            vis = torch.stack(torch.broadcast_tensors(*vis), -1)
            if marginalize_hidden:
                pyro.factor("free_energy", -self.free_energy(vis))
            else:
                hid = [pyro.sample(f"h_{j}", dist.Bernoulli(half))
                       for j in range(self.n_hidden)]
                hid = torch.stack(torch.broadcast_tensors(*hid), -1)
                pyro.factor("energy", -self.energy(vis, hid))
        return vis

    # ---------------------------------------------------------------- training
    def fit(self, data: torch.Tensor, *, method: str = "cd", k: int = 1, epochs: int = 10,
            batch_size: int = 100, lr: float = 0.05, momentum: float = 0.5,
            weight_decay: float = 0.0, optimizer: torch.optim.Optimizer | None = None,
            num_chains: int | None = None, generator: torch.Generator | None = None,
            progress: bool | None = None, callback=None) -> CDTrainer:
        """Train by CD-k (``method="cd"``) or persistent CD (``"pcd"``); see
        :class:`~pyro_dgm.models.rbm_training.CDTrainer` for the arguments. Returns the
        trainer (its ``history`` holds per-epoch figures; call ``fit`` on it to go on)."""
        method = check_choice("method", method, ("cd", "pcd"))
        trainer = CDTrainer(self, optimizer, k=k, persistent=method == "pcd", lr=lr,
                            momentum=momentum, weight_decay=weight_decay,
                            num_chains=num_chains, generator=generator)
        trainer.fit(data, epochs=epochs, batch_size=batch_size, progress=progress,
                    callback=callback)
        return trainer
