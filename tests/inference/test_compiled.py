"""compile_loss: the compiled step equals the ordinary one (same draws, float64, 1e-6) for
every objective and guide, retraces on a new signature, and falls back with one warning
where the graph cannot follow the model."""

import contextlib
import random

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyro_dgm.inference import (
    IWAE,
    AmortizedFlowGuide,
    CompileFallbackWarning,
    FlowGuide,
    NonFiniteLossError,
    PerturbativeELBO,
    compile_loss,
)
from pyro_dgm.models import DLGM, DLGMGuide, FactorAnalysis

F64 = torch.float64
OBJECTIVES = {
    "trace": lambda: Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    "meanfield": lambda: TraceMeanField_ELBO(max_plate_nesting=1),
    "iwae": lambda: IWAE(4, "iwae", max_plate_nesting=1),
    "stl": lambda: IWAE(4, "stl", max_plate_nesting=1),
    "dreg": lambda: IWAE(4, "dreg", max_plate_nesting=1),
    "perturbative": lambda: PerturbativeELBO(3, 6, max_plate_nesting=1),
}


def regression(x, y=None):
    """Global weights and noise scale, local observations."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    s = pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=x.dtype), 1.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((w.unsqueeze(-2) * x).sum(-1), s.unsqueeze(-1)), obs=y)


def _data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    return x, x @ torch.tensor([1.0, -0.5, 0.3], dtype=F64) + 0.3 * torch.randn(n, generator=g,
                                                                             dtype=F64)


def _leaves(model, guide, store=True):
    params = [p for m in (model, guide) if isinstance(m, torch.nn.Module)
              for p in m.parameters()]
    if store:
        params += [pyro.param(n).unconstrained() for n in pyro.get_param_store().keys()]
    return list({id(p): p for p in params}.values())


def assert_same_steps(make, model, guide, args, kwargs_list, steps=2):
    """Ordinary and compiled ``differentiable_loss`` from the same seeds: loss and gradient
    within 1e-6, and one graph for one signature (the structure check runs every step: it
    must draw nothing)."""
    ordinary, compiled = make(), compile_loss(make(), backend="fx", check_every=1)
    ordinary.loss(model, guide, *args, **kwargs_list[0])  # create lazy parameters
    params = _leaves(model, guide)
    for step in range(steps):
        for kwargs in kwargs_list:
            out = []
            for objective in (ordinary, compiled):
                pyro.set_rng_seed(100 + step)
                loss = objective.differentiable_loss(model, guide, *args, **kwargs)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                out.append((loss.detach(), grads))
            (l0, g0), (l1, g1) = out
            assert torch.allclose(l0, l1, atol=1e-6, rtol=0), (l0, l1)
            for a, b in zip(g0, g1, strict=True):
                assert (a is None and b is None) or (a is None and not b.abs().max() > 0) or \
                    torch.allclose(a, b, atol=1e-6, rtol=0)
    assert compiled.num_traces == 1 and not compiled.fallbacks
    return compiled


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("guide_type", ["normal", "mvn"])
def test_autoguides_equal_ordinary(objective, guide_type):
    if guide_type == "mvn" and objective in ("meanfield",):
        pytest.skip("TraceMeanField_ELBO needs a mean-field guide")
    x, y = _data()
    guide = (AutoNormal if guide_type == "normal" else AutoMultivariateNormal)(regression)
    assert_same_steps(OBJECTIVES[objective], regression, guide, (x,), [{"y": y}])


@pytest.mark.parametrize("guide_type", [AutoNormal, AutoMultivariateNormal])
def test_structure_check_after_lazy_creation_passes(guide_type):
    """A guide whose parameters the first compiled step creates: the creating run records
    the creation's param sites too; the guarded structure is the steady one (the structure
    check at later steps found 'sites changed' with no site changed and fell back)."""
    x, y = _data()
    pyro.clear_param_store()
    guide = guide_type(regression)
    compiled = compile_loss(Trace_ELBO(num_particles=2, vectorize_particles=True,
                                       max_plate_nesting=1), backend="fx", check_every=1)
    svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.01}), compiled)
    for _ in range(4):
        svi.step(x, y=y)
    assert compiled.num_traces == 1 and not compiled.fallbacks


def _fa(n=10):
    W = torch.tensor([[2.0, 1.8], [1.0, 1.1], [1.5, 1.3], [0.5, 0.6]], dtype=F64)
    fa = FactorAnalysis(4, 2, loc=torch.zeros(4, dtype=F64), W=W,
                        psi=torch.full((4,), 0.5, dtype=F64))
    return fa, fa.simulate(n, seed=1).x


@pytest.mark.parametrize("objective", ["trace", "iwae", "dreg", "perturbative"])
def test_flow_guides_and_subsampled_plates(objective):
    fa, x = _fa(30)
    amortized = AmortizedFlowGuide(fa, flow="realnvp", num_flows=2, hidden_dims=(8,))
    batches = [{"subsample": torch.tensor(i)} for i in ([3, 7, 11, 29], [0, 1, 2, 5])]
    compiled = assert_same_steps(OBJECTIVES[objective], fa, amortized, (x,), batches)
    assert compiled.num_traces == 1  # new indices of the same size: the same graph
    x_reg, y = _data()
    flow = FlowGuide(regression, flow="iaf", num_flows=2, hidden_dims=(8,))
    assert_same_steps(OBJECTIVES[objective], regression, flow, (x_reg,), [{"y": y}])


def test_module_loop_with_subsample_matches_and_svi_matches():
    """The DLGM training step (module-local parameters, index minibatches) and SVI with a
    Pyro optimizer end in the same parameters compiled or not."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 6, generator=g, dtype=F64) > 0.5).to(F64)
    with pyro.settings.context(module_local_params=True):
        model = DLGM(6, [2], hidden_dims=[8]).to(F64)
        guide = DLGMGuide(model).to(F64)
        idx = [{"subsample": torch.arange(8) + 8 * i} for i in range(3)]
        for name in ("trace", "iwae", "dreg"):
            assert_same_steps(OBJECTIVES[name], model, guide, (x,), idx)
    finals = []
    for make in (OBJECTIVES["iwae"], lambda: compile_loss(OBJECTIVES["iwae"]())):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        x_reg, y = _data()
        guide = AutoNormal(regression)
        svi = SVI(regression, guide, pyro.optim.ClippedAdam({"lr": 0.05}), make())
        losses = [svi.step(x_reg, y=y) for _ in range(4)]
        finals.append((losses, [p.detach().clone() for p in guide.parameters()]))
    assert finals[0][0] == pytest.approx(finals[1][0], abs=1e-6)
    for a, b in zip(finals[0][1], finals[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_new_shape_retraces():
    compiled = compile_loss(Trace_ELBO(), backend="fx")
    guide = AutoNormal(regression)
    for n in (12, 12, 7, 12):
        x, y = _data(n)
        compiled.differentiable_loss(regression, guide, x, y=y).backward()
    assert compiled.num_traces == 2 and not compiled.fallbacks


def _branching(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    if w.sum() > 0:  # data-dependent Python control flow
        w = 2 * w
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((w.unsqueeze(-2) * x).sum(-1), 1.0), obs=y)


def test_data_dependent_control_flow_falls_back_with_the_ordinary_result():
    x, y = _data()
    guide = AutoNormal(_branching)
    ordinary, compiled = Trace_ELBO(), compile_loss(Trace_ELBO(), backend="fx")
    ordinary.loss(_branching, guide, x, y=y)
    params = _leaves(_branching, guide)
    out = []
    for objective in (ordinary, compiled):
        pyro.set_rng_seed(5)
        with pytest.warns(CompileFallbackWarning, match="data-dependent.*test_compiled.py") if \
                objective is compiled else contextlib.nullcontext():
            loss = objective.differentiable_loss(_branching, guide, x, y=y)
        out.append((loss, torch.autograd.grad(loss, params)))
    assert compiled.fallbacks and "data-dependent" in next(iter(compiled.fallbacks.values()))
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert torch.equal(a, b)


def test_changed_structure_falls_back_once():
    flips = random.Random(0)

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
        if flips.random() < 0.5:  # control flow the graph cannot see
            pyro.sample("extra", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Normal((w.unsqueeze(-2) * x).sum(-1), 1.0), obs=y)

    def guide(x, y=None):
        loc = pyro.param("loc", torch.zeros(3, dtype=x.dtype))
        pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))
        pyro.sample("extra", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))

    x, y = _data()
    compiled = compile_loss(Trace_ELBO(), backend="fx", check_every=1)
    with pytest.warns(CompileFallbackWarning, match="sites changed") as record, \
            pyro.validation_enabled(False):
        for _ in range(12):
            compiled.differentiable_loss(model, guide, x, y=y).backward()
    assert len([w for w in record if w.category is CompileFallbackWarning]) == 1


def test_non_finite_loss_under_validation_is_the_objectives_error():
    """With validation on, a non-finite compiled loss reruns the ordinary step, whose error
    names the problem (IWAE: NonFiniteLossError)."""
    x, y = _data()
    guide = AutoNormal(regression)
    compiled = compile_loss(IWAE(3, max_plate_nesting=1), backend="fx")
    compiled.differentiable_loss(regression, guide, x, y=y).backward()
    bad = y.clone()
    bad[0] = float("inf")
    with pytest.raises(NonFiniteLossError):
        compiled.differentiable_loss(regression, guide, x, y=bad)
    assert compiled.num_traces == 1 and not compiled.fallbacks


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        compile_loss(Trace_ELBO(), backend="jit")
    with pytest.raises(ValueError, match="loss"):
        compile_loss(lambda m, g: 0)
    with pytest.raises(ValueError, match="check_every"):
        compile_loss(Trace_ELBO(), check_every=-1)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["fx", "inductor"])
def test_cuda_dlgm_step_equals_ordinary(device, backend):
    """On a GPU: the DLGM step (IWAE, index minibatches) compiled eagerly or with
    torch.compile + CUDA graphs ("inductor" on CUDA) equals the ordinary step."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 6, generator=g, dtype=F64) > 0.5).to(F64).to(device)
    with pyro.settings.context(module_local_params=True):
        model = DLGM(6, [2], hidden_dims=[8]).to(device=device, dtype=F64)
        guide = DLGMGuide(model).to(device=device, dtype=F64)
        ordinary, compiled = OBJECTIVES["iwae"](), compile_loss(OBJECTIVES["iwae"](),
                                                                backend=backend)
        params = _leaves(model, guide, store=False)
        for step in range(3):
            idx = (torch.arange(8) + 8 * step).to(device)
            out = []
            for objective in (ordinary, compiled):
                pyro.set_rng_seed(7 + step)
                loss = objective.differentiable_loss(model, guide, x, subsample=idx)
                out.append((loss.detach(), torch.autograd.grad(loss, params)))
            assert torch.allclose(out[0][0], out[1][0], atol=1e-6, rtol=0)
            for a, b in zip(out[0][1], out[1][1], strict=True):
                assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert compiled.num_traces == 1 and not compiled.fallbacks
