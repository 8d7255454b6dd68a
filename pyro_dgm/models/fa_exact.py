r"""Closed-form evidence and posterior of factor analysis with known parameters.

For fixed :math:`(\mu, W, \Psi)` the marginal is :math:`x \sim \mathcal N(\mu, C)`,
:math:`C = WW^\top + \Psi`, and the posterior of the factors is

.. math::

    p(z \mid x) = \mathcal N\big(M^{-1} W^\top \Psi^{-1} (x - \mu),\ M^{-1}\big),
    \qquad M = I_q + W^\top \Psi^{-1} W .

Both are computed through :math:`M` (Woodbury identity and the matrix determinant lemma,
:math:`\log\det C = \log\det M + \sum_i \log \psi_i`) in :math:`O(Npq + q^3)`;
:func:`fa_log_marginal` lives in :mod:`pyro_dgm.models.fa_marginal` and is re-exported here.

Because :math:`\log p(x, z) - \log p(z \mid x) = \log p(x)` for every :math:`z`, a guide that
*is* the exact posterior makes every variational bound equal :math:`\log p(x)` with zero
variance, and its sticking-the-landing / DReG gradients vanish: the ground truth for the
objectives in :mod:`pyro_dgm.inference`.

Example::

    >>> fa = FactorAnalysis(4, 2, loc=mu, W=W, psi=psi)
    >>> guide = ExactPosteriorGuide(fa)
    >>> elbo = -Trace_ELBO().loss(fa, guide, x)          # == fa_log_marginal(x, mu, W, psi).sum()
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyro_dgm._shared import data_plate
from pyro_dgm.models.fa_marginal import fa_log_marginal, precision_cholesky
from pyro_dgm.models.factor_analysis import FactorAnalysis

__all__ = ["ExactPosteriorGuide", "fa_log_marginal", "fa_posterior"]


def fa_posterior(
    x: torch.Tensor, loc: torch.Tensor, W: torch.Tensor, psi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact posterior :math:`p(z_n \mid x_n)`: means ``(N, q)`` and the shared ``(q, q)``
    covariance :math:`M^{-1}`."""
    L = precision_cholesky(W, psi)
    b = ((x - loc) / psi) @ W
    mean = torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
    return mean, torch.cholesky_inverse(L)


class ExactPosteriorGuide(PyroModule):
    r"""A guide that *is* the exact posterior of a fixed-parameter :class:`FactorAnalysis`.

    It is an amortized linear-Gaussian guide
    :math:`q(z_n \mid x_n) = \mathcal N(A x_n + c, LL^\top)` whose learnable parameters
    ``weight`` (:math:`A`), ``bias`` (:math:`c`) and ``scale_tril`` (:math:`L`) start at the
    exact values :math:`A = M^{-1}W^\top\Psi^{-1}`, :math:`c = -A\mu`, :math:`LL^\top = M^{-1}`.
    Being reparameterized and able to score any value, it is the test case for STL/DReG
    gradients (exactly zero at this point).

    :param model: a :class:`FactorAnalysis` with ``loc``, ``W`` and ``psi`` fixed and
        ``marginalize_latents=False``.
    """

    def __init__(self, model: FactorAnalysis):
        super().__init__()
        if not isinstance(model, FactorAnalysis) or not model.is_fixed:
            raise ValueError("model must be a FactorAnalysis with loc, W and psi fixed")
        if model.marginalize_latents:
            raise ValueError("model has no latent z to guide (marginalize_latents=True)")
        loc, W, psi = model.fixed_loc, model.fixed_W, model.fixed_psi
        L = precision_cholesky(W, psi)
        weight = torch.cholesky_solve((W / psi.unsqueeze(-1)).T, L)  # M^-1 W^T Psi^-1
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(-(weight @ loc))
        self.scale_tril = PyroParam(torch.linalg.cholesky(torch.cholesky_inverse(L)),
                                    constraint=constraints.lower_cholesky)
        self._model = [model]  # not a submodule: the guide owns no model parameters

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        subsample: torch.Tensor | None = None,
        num_data: int | None = None,
    ) -> torch.Tensor:
        if x is None:
            raise ValueError("ExactPosteriorGuide needs the data x")
        x = self._model[0].check_data(x)  # integer data: the model's float dtype
        with data_plate(x, subsample=subsample, num_data=num_data) as batch:
            mean = batch @ self.weight.T + self.bias
            return pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=self.scale_tril))
