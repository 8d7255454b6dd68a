"""Objectives, guides and MCMC kernels that plug into Pyro's ``SVI`` and ``MCMC``."""

__all__: list[str] = []
