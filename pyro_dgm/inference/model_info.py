"""What a Pyro model looks like, from one trace: its latent, observed and deterministic sites.

A *prototype* trace (one run of the model at one point of its latent space) tells every
site's value shape, its plates (and the ArviZ dimension names they give), whether it is
observed, and the model's plate nesting. Kernels use it to batch chains; the ArviZ export
uses it to shape draws and name dimensions.

The point is not required to be a draw from the prior, so improper priors
(:class:`~pyro.distributions.ImproperUniform`) work: a site takes its value from ``values``
when given (the export passes the first posterior draw), else a prior draw where the
distribution can draw one, else a point in its support (:func:`support_point`). A prior draw
is kept as the default because it consumes the random stream exactly as Pyro's own
prototype traces do, so seeded runs stay reproducible; when the model fails at the prior
draws (an extreme draw of a very wide prior overflowing the likelihood, say), the trace is
retried at support points only.

``pyro.deterministic`` sites are observed sites to Pyro (a masked ``Delta`` with
``infer["_deterministic"]``); here they are listed apart, in :attr:`ModelInfo.deterministic`,
and never among the observed sites.

Example::

    >>> info = model_info(model, (x,))
    >>> info.latent              # {"beta": torch.Size([3]), "sigma": torch.Size([])}
    >>> info.max_plate_nesting   # 1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

__all__ = ["ModelInfo", "data_like", "is_deterministic", "model_info", "point_strategy",
           "support_point"]


@dataclass
class ModelInfo:
    """What the export needs to know about a model, from one prototype trace."""

    latent: dict[str, torch.Size]  # latent site -> value shape (batch + event)
    observed: dict[str, torch.Tensor]  # observed site -> observed value
    batch_ndim: dict[str, int]  # site -> number of batch dims
    dims: dict[str, list[str]]  # site -> ArviZ dim names of the value
    max_plate_nesting: int
    #: latent site -> dtype of its values (discrete draws may be stored as floats)
    dtypes: dict[str, torch.dtype] | None = None
    #: ``pyro.deterministic`` site -> value shape
    deterministic: dict[str, torch.Size] = field(default_factory=dict)


def is_deterministic(site: dict) -> bool:
    """True for a ``pyro.deterministic`` site (Pyro records it as an observed sample site)."""
    return bool(site["infer"].get("_deterministic", False))


def support_point(site: dict, radius: float = 0.0, like: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """A point in the support of ``site["fn"]`` found without sampling from it.

    Continuous supports: the image of ``0`` (``radius=0``) or of a uniform draw in
    ``(-radius, radius)`` of the unconstrained space under ``biject_to(support)``, shaped like
    the site's value. Discrete supports: the first element of the enumerated support, else 0.
    The dtype and device are those of the distribution's parameters, else of ``like`` (the
    model's data), else torch's defaults.

    :raises ValueError: naming the site when its support has no such point.
    """
    fn = site["fn"]
    shape = torch.Size(fn.batch_shape) + torch.Size(fn.event_shape)
    like = next((v for v in vars(fn).values() if torch.is_tensor(v)
                 and v.is_floating_point()), like if like is not None else torch.zeros(()))
    if fn.support.is_discrete:
        if fn.has_enumerate_support:
            return fn.enumerate_support(expand=True)[0].detach()
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    try:
        t = biject_to(fn.support)
    except NotImplementedError as e:
        raise ValueError(f"site {site['name']!r}: no point in the support {fn.support} "
                         "can be found without sampling") from e
    u = torch.zeros(t.inverse_shape(shape), dtype=like.dtype, device=like.device)
    if radius > 0:
        u = u.uniform_(-radius, radius)
    return t(u).detach()


def point_strategy(values: dict[str, torch.Tensor] | None = None, *, prior: bool = True,
                   like: torch.Tensor | None = None):
    """An init function for :class:`~pyro.infer.autoguide.initialization.InitMessenger`.

    A site takes ``values[name]`` (reshaped to the site's shape; ignored when its size does
    not fit), else a prior draw when ``prior`` and the distribution can draw (the very call
    Pyro makes, so the random stream is the same), else :func:`support_point` (with dtype
    and device of ``like`` where the distribution has no tensor parameters).
    """
    values = values or {}

    def init_fn(site: dict) -> torch.Tensor:
        fn = site["fn"]
        given = values.get(site["name"])
        if given is not None and not fn.support.is_discrete:  # discrete: keep the dtype
            shape = torch.Size(fn.batch_shape) + torch.Size(fn.event_shape)
            if given.numel() == shape.numel():
                return given.detach().reshape(shape)
        if prior:
            try:
                return fn(*site["args"], **site["kwargs"]).detach()
            except NotImplementedError:  # ImproperUniform and other improper priors
                pass
        return support_point(site, like=like)

    return init_fn


def data_like(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The first floating-point tensor among a model's arguments (its dtype and device)."""
    return next((a for a in (*args, *kwargs.values())
                 if torch.is_tensor(a) and a.is_floating_point()), None)


def _site_dims(name: str, site: dict) -> list[str]:
    value_ndim = site["value"].dim()
    names = [f"{name}_dim_{i}" for i in range(value_ndim)]
    batch_ndim = len(site["fn"].batch_shape)
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.dim is not None and -frame.dim <= batch_ndim:
            names[batch_ndim + frame.dim] = frame.name
    return names


def _deterministic_dims(name: str, site: dict) -> tuple[int, list[str]]:
    """Batch dims and dim names of a deterministic site. Its ``Delta`` has ``event_dim``
    equal to the value's rank unless the user gave one, and the plates then broadcast its
    batch shape past the value; so plates are aligned with the explicit batch dims if there
    are any, else with the value's right end where their sizes agree."""
    value = site["value"]
    names = [f"{name}_dim_{i}" for i in range(value.dim())]
    batch_ndim = max(value.dim() - site["fn"].event_dim, 0)
    end = batch_ndim if batch_ndim else value.dim()
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.dim is not None and -frame.dim <= end:
            if value.shape[end + frame.dim] == frame.size:
                names[end + frame.dim] = frame.name
    return batch_ndim, names


def _trace(model, args, kwargs, init_fn):
    with torch.no_grad(), poutine.block():
        return poutine.trace(InitMessenger(init_fn)(model)).get_trace(*args, **kwargs)


def model_info(model, args: tuple = (), kwargs: dict | None = None, *,
               values: dict[str, torch.Tensor] | None = None) -> ModelInfo:
    """Trace ``model(*args, **kwargs)`` once at a point of its support and describe its
    sample sites.

    :param values: latent site -> one value (e.g. the first posterior draw) to trace at;
        other sites take a prior draw, or a point of their support where the prior cannot
        be sampled (see :func:`point_strategy`).
    """
    kwargs = kwargs or {}
    like = data_like(tuple(args), kwargs)
    # the given values, else prior draws (an extreme one may break the model), else points
    attempts = ([] if values is None else [(values, True)]) + [(None, True), (None, False)]
    for k, (given, prior) in enumerate(attempts):
        try:
            trace = _trace(model, args, kwargs, point_strategy(given, prior=prior, like=like))
            break
        except (RuntimeError, ValueError) as e:
            if k == 0:
                first = e
            if k == len(attempts) - 1:
                raise first from None
    latent, observed, batch_ndim, dims, dtypes, determ = {}, {}, {}, {}, {}, {}
    nesting = 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        if is_deterministic(site):
            batch_ndim[name], dims[name] = _deterministic_dims(name, site)
            determ[name] = site["value"].shape
            continue
        batch_ndim[name] = len(site["fn"].batch_shape)
        dims[name] = _site_dims(name, site)
        if site["is_observed"]:
            observed[name] = site["value"].detach()
        else:
            latent[name] = site["value"].shape
            dtypes[name] = site["value"].dtype
    return ModelInfo(latent, observed, batch_ndim, dims, nesting, dtypes, determ)
