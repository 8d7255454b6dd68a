r"""The four 2-D energy targets of Rezende & Mohamed (2015, Fig. 3) as Pyro models.

Each target is :math:`p(z) \propto \exp(-U(z))` on :math:`z \in \mathbb R^2` with

.. math::

    w_1 = \sin\tfrac{2\pi z_1}{4},\quad
    w_2 = 3\exp\!\big(-\tfrac12\big(\tfrac{z_1 - 1}{0.6}\big)^2\big),\quad
    w_3 = 3\,\sigma\!\big(\tfrac{z_1 - 1}{0.3}\big),

.. math::

    U_1 &= \tfrac12\big(\tfrac{\lVert z\rVert - 2}{0.4}\big)^2
          - \log\big(e^{-\frac12((z_1 - 2)/0.6)^2} + e^{-\frac12((z_1 + 2)/0.6)^2}\big) \\
    U_2 &= \tfrac12\big(\tfrac{z_2 - w_1}{0.4}\big)^2 \\
    U_3 &= -\log\big(e^{-\frac12((z_2 - w_1)/0.35)^2}
                    + e^{-\frac12((z_2 - w_1 + w_2)/0.35)^2}\big) \\
    U_4 &= -\log\big(e^{-\frac12((z_2 - w_1)/0.4)^2}
                    + e^{-\frac12((z_2 - w_1 + w_3)/0.35)^2}\big).

:math:`U_1` is normalizable on :math:`\mathbb R^2`; :math:`U_2`–:math:`U_4` are flat in
:math:`z_1` and live on a box :math:`[-a, a]^2` (default :math:`a = 4`, the paper's plots).
The model samples ``z`` from an improper flat density on the domain and adds
``pyro.factor("energy", -U(z))``, so its unnormalized log joint is exactly :math:`-U(z)`
and :math:`\log Z = \log\int e^{-U}` is the evidence. For any guide :math:`q`,

.. math::

    \mathrm{KL}(q\,\|\,p) = \mathbb E_q[\log q(z) + U(z)] + \log Z \ \ge 0 .

:data:`LOG_Z` holds the exact values (Simpson quadrature);
:func:`energy_log_z` recomputes them.

Example::

    >>> target = EnergyTarget("U1")
    >>> guide = FlowGuide(target, flow="realnvp", num_flows=8)
    >>> kl = energy_kl(target, guide, num_samples=10_000)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch.distributions import biject_to

from pyro_dgm._validation import check_choice, check_int, check_positive

__all__ = ["ENERGIES", "LOG_Z", "EnergyTarget", "energy_kl", "energy_log_z"]


def _w1(z1):
    return torch.sin(2 * math.pi * z1 / 4)


def _neg_sq(x, s):
    return -0.5 * (x / s) ** 2


def u1(z: torch.Tensor) -> torch.Tensor:
    """Ring with two modes."""
    z1 = z[..., 0]
    r = torch.linalg.vector_norm(z, dim=-1)
    modes = torch.logaddexp(_neg_sq(z1 - 2, 0.6), _neg_sq(z1 + 2, 0.6))
    return 0.5 * ((r - 2) / 0.4) ** 2 - modes


def u2(z: torch.Tensor) -> torch.Tensor:
    """Sine wave."""
    return -_neg_sq(z[..., 1] - _w1(z[..., 0]), 0.4)


def u3(z: torch.Tensor) -> torch.Tensor:
    """Sine wave splitting into two branches with a Gaussian bump."""
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    w2 = 3 * torch.exp(_neg_sq(z1 - 1, 0.6))
    return -torch.logaddexp(_neg_sq(z2 - w1, 0.35), _neg_sq(z2 - w1 + w2, 0.35))


def u4(z: torch.Tensor) -> torch.Tensor:
    """Sine wave splitting into two branches with a sigmoid step."""
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -torch.logaddexp(_neg_sq(z2 - w1, 0.4), _neg_sq(z2 - w1 + w3, 0.35))


#: name -> energy function U(z), z of shape (..., 2)
ENERGIES = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}

#: exact log Z by (name, box half-width), composite Simpson on 2001² points (converged to
#: 1e-12: 801² agrees). U1 on either box equals U1 on R^2 to 1e-8. The reference sheet's
#: values for U2-U4 (2.08221, 2.64183, 2.68474 on [-4, 4]^2; 2.48772, 3.04734, 3.11633 on
#: [-6, 6]^2) are 1.2e-4 to 1.7e-4 too high: a plain sum over an 8001² grid that includes
#: both edges counts the boundary twice (it reproduces the [-4, 4]^2 values exactly).
LOG_Z = {
    ("U1", 4.0): 1.877502, ("U2", 4.0): 2.082089, ("U3", 4.0): 2.641705,
    ("U4", 4.0): 2.684568,
    ("U1", 6.0): 1.877502, ("U2", 6.0): 2.487554, ("U3", 6.0): 3.047170,
    ("U4", 6.0): 3.116163,
}


def energy_log_z(name: str, half_width: float = 4.0, num_points: int = 2001,
                 dtype: torch.dtype = torch.float64) -> float:
    """:math:`\\log\\int_{[-a,a]^2} e^{-U(z)}\\,dz` by the composite Simpson rule.

    :param num_points: grid points per axis (odd).
    """
    check_choice("name", name, ENERGIES)
    a = check_positive("half_width", half_width)
    n = check_int("num_points", num_points, minimum=3)
    n += 1 - n % 2
    grid = torch.linspace(-a, a, n, dtype=dtype)
    weights = torch.ones(n, dtype=dtype)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    log_w = weights.log() + math.log(2 * a / (n - 1) / 3)
    rows = []
    for start in range(0, n, 256):  # bounded memory
        z1 = grid[start:start + 256]
        z = torch.stack(torch.broadcast_tensors(z1[:, None], grid[None, :]), -1)
        log_f = -ENERGIES[name](z) + log_w[start:start + 256, None] + log_w[None, :]
        rows.append(torch.logsumexp(log_f.reshape(-1), 0))
    return float(torch.logsumexp(torch.stack(rows), 0))


class _Flat(dist.ImproperUniform):
    """Flat density on a support; ``sample`` returns its central point (initialization)."""

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        return biject_to(self.support)(torch.zeros(shape))


class EnergyTarget:
    """Pyro model of :math:`p(z) \\propto e^{-U(z)}` with one sample site ``z`` of shape (2,).

    :param name: ``"U1"``, ``"U2"``, ``"U3"`` or ``"U4"``.
    :param half_width: the box :math:`[-a, a]^2`; ``None`` means :math:`\\mathbb R^2`
        (only for ``U1``; the default for ``U1``), else default 4.
    """

    def __init__(self, name: str, half_width: float | None = None):
        self.name = check_choice("name", name, ENERGIES)
        if half_width is None and name != "U1":
            half_width = 4.0
        if half_width is not None:
            half_width = check_positive("half_width", half_width)
        self.half_width = half_width
        self.energy = ENERGIES[name]
        if half_width is None:
            self.support = constraints.real_vector
        else:
            self.support = constraints.independent(
                constraints.interval(-half_width, half_width), 1)

    @property
    def log_z(self) -> float:
        """Exact :math:`\\log Z` (tabulated, else by quadrature)."""
        key = (self.name, 4.0 if self.half_width is None else self.half_width)
        if key in LOG_Z:
            return LOG_Z[key]
        return energy_log_z(self.name, key[1])

    def __call__(self) -> torch.Tensor:
        z = pyro.sample("z", _Flat(self.support, (), (2,)))
        pyro.factor("energy", -self.energy(z))
        return z

    def __repr__(self) -> str:
        box = "R^2" if self.half_width is None else f"[-{self.half_width}, {self.half_width}]^2"
        return f"EnergyTarget({self.name}, {box})"


@torch.no_grad()
def energy_kl(target: EnergyTarget, guide, num_samples: int = 10_000) -> float:
    """Monte Carlo :math:`\\mathrm{KL}(q\\|p) = \\mathbb E_q[\\log q + U] + \\log Z`.

    ``guide`` is any Pyro guide for ``target`` whose trace log density is
    :math:`\\log q(z)` (autoguides included); draws are vectorized in one plate.
    """
    n = check_int("num_samples", num_samples, minimum=1)
    with pyro.plate("kl_draws", n, dim=-1):
        trace = poutine.trace(guide).get_trace()
    trace.compute_log_prob()
    log_q = sum(site["log_prob"] for site in trace.nodes.values()
                if site["type"] == "sample")
    z = trace.nodes["z"]["value"]
    return float((log_q + target.energy(z)).mean()) + target.log_z
