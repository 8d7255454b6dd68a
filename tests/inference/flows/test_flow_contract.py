"""One contract test over every flow: shapes, gradients, log-det vs the autograd Jacobian,
inverse round trip, invertibility conditions, state_dict round trip."""

import pytest
import torch

from pyro_dgm.inference.flows import FLOWS, NotInvertibleError, Planar, Radial, build_flows

CASES = [(name, c) for name in FLOWS for c in (0, 3)]
DIM = 3


def _randomize(module, scale=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def _make(name, context_dim, dtype=torch.float64, num_flows=2):
    flows = build_flows(name, DIM, num_flows, context_dim=context_dim, hidden_dims=(8, 8))
    return flows.to(dtype)


@pytest.mark.parametrize("name,context_dim", CASES)
def test_shapes_and_gradients(name, context_dim, dtype):
    flows = _make(name, context_dim, dtype)
    _randomize(flows)
    z = torch.randn(4, 5, DIM, dtype=dtype)
    context = torch.randn(5, context_dim, dtype=dtype) if context_dim else None
    y, log_det = flows(z, context)
    assert y.shape == z.shape and y.dtype == dtype
    assert log_det.shape == (4, 5)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    (y.square().sum() + log_det.sum()).backward()
    for pname, p in flows.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name,context_dim", CASES)
def test_log_det_matches_autograd_jacobian(name, context_dim):
    flows = _make(name, context_dim)
    _randomize(flows)
    z = torch.randn(6, DIM, dtype=torch.float64)
    context = torch.randn(6, context_dim, dtype=torch.float64) if context_dim else None
    _, log_det = flows(z, context)
    for i in range(len(z)):
        ctx = None if context is None else context[i:i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, c=ctx: flows(v[None], c)[0][0], z[i])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign > 0  # orientation preserving, det > 0
        assert float(flows.log_abs_det_jacobian(z[i:i + 1], ctx)[0].detach() - expected) == \
            pytest.approx(0, abs=1e-5)
        assert float(log_det[i].detach() - expected) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("name,context_dim", CASES)
def test_inverse_round_trip(name, context_dim):
    flows = _make(name, context_dim, num_flows=3)
    _randomize(flows)
    z = torch.randn(7, DIM, dtype=torch.float64)
    context = torch.randn(7, context_dim, dtype=torch.float64) if context_dim else None
    y, log_det = flows(z, context)
    assert flows.invertible == FLOWS[name].invertible
    if not flows.invertible:
        with pytest.raises(NotInvertibleError, match="no inverse"):
            flows.inverse(y, context)
        assert issubclass(NotInvertibleError, ValueError)
        return
    z_back, log_det_back = flows.inverse(y, context)
    torch.testing.assert_close(z_back, z, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_det_back, log_det, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,context_dim", CASES)
def test_state_dict_round_trip(name, context_dim, tmp_path):
    flows = _make(name, context_dim)
    _randomize(flows)
    torch.save(flows.state_dict(), tmp_path / "flows.pt")
    other = _make(name, context_dim)
    _randomize(other, seed=7)
    other.load_state_dict(torch.load(tmp_path / "flows.pt"))
    z = torch.randn(5, DIM, dtype=torch.float64)
    context = torch.randn(5, context_dim, dtype=torch.float64) if context_dim else None
    for a, b in zip(flows(z, context), other(z, context), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("context_dim", [0, 3])
def test_planar_invertibility_after_arbitrary_updates(context_dim):
    flow = Planar(DIM, context_dim).double()
    context = torch.randn(50, context_dim, dtype=torch.float64) if context_dim else None
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):  # adversarial raw values: u anti-parallel to w, large and tiny
        with torch.no_grad():
            w = torch.randn(DIM, generator=gen, dtype=torch.float64) * 10 ** (trial % 5 - 2)
            flow.w.copy_(w)
            flow.u.copy_(-(trial + 1) * 3.0 * w / w.square().sum().clamp_min(1e-300) ** 0.5)
            if context_dim:
                flow.head.weight.copy_(torch.randn(flow.head.weight.shape, generator=gen,
                                                   dtype=torch.float64) * 5)
        u_hat, w_eff, _, wu = flow.parameters_for(context)
        assert ((w_eff * u_hat).sum(-1) >= -1 - 1e-9).all()
        assert (wu >= -1).all()
    # and after optimizer steps that push w·u towards -infinity
    opt = torch.optim.Adam(flow.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        (flow.w * flow.u).sum().backward()
        opt.step()
        u_hat, w_eff, _, wu = flow.parameters_for(context)
        assert (wu >= -1).all()  # the value the log-determinant uses
        assert ((w_eff * u_hat).sum(-1) >= -1 - 1e-9).all()  # up to rounding
        z = torch.randn(50, DIM, dtype=torch.float64)
        assert torch.isfinite(flow(z, context)[1]).all()


def test_radial_invertibility_after_arbitrary_updates():
    flow = Radial(DIM, 3).double()
    context = torch.randn(40, 3, dtype=torch.float64)
    for value in (-50.0, -5.0, 0.0, 5.0):
        with torch.no_grad():
            flow.alpha_raw.fill_(value)
            flow.beta_raw.fill_(-value)
            flow.head.weight.normal_(0, 3)
        _, alpha, beta = flow.parameters_for(context)
        assert (alpha > 0).all() and (beta >= -alpha).all()


@pytest.mark.parametrize("name", list(FLOWS))
def test_bad_arguments_name_the_argument(name):
    with pytest.raises(ValueError, match="num_flows"):
        build_flows(name, 2, 0)
    with pytest.raises(ValueError, match="unknown flow 'sylvester'"):
        build_flows("sylvester", 2, 2)
    flows = build_flows(name, 2, 1, context_dim=4)
    with pytest.raises(ValueError, match="context"):
        flows(torch.randn(3, 2))


@pytest.mark.parametrize("name", list(FLOWS))
def test_misspelt_keyword_raises(name):
    """Every flow declares its keywords: a misspelt one is an error, not silently ignored,
    both for the class itself and through build_flows (which passes parity/reverse/
    hidden_dims only to the flows that declare them)."""
    with pytest.raises(TypeError, match="bogus"):
        FLOWS[name](DIM, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        build_flows(name, DIM, 2, bogus=1)
    flows = build_flows(name, DIM, 2, hidden_dims=(4,))  # declared by some flows only
    assert len(flows.flows) == 2


@pytest.mark.parametrize("name,context_dim", CASES)
def test_a_fresh_flow_is_the_identity_and_learns_from_the_first_step(name, context_dim,
                                                                      dtype):
    """Every layer starts at the identity map (zero last layers of the IAF/coupling
    networks, u = 0 for planar, beta = 0 for radial, zero context heads), so a guide starts
    exactly at its base distribution; yet the first gradient moves it away."""
    torch.manual_seed(5)
    flows = build_flows(name, DIM, 3, context_dim=context_dim, hidden_dims=(8, 8)).to(dtype)
    z = torch.randn(4, 6, DIM, dtype=dtype) * 3
    context = torch.randn(6, context_dim, dtype=dtype) if context_dim else None
    y, log_det = flows(z, context)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y, z, atol=tol, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros_like(log_det), atol=tol, rtol=0)
    if flows.invertible:
        z_back, log_det_back = flows.inverse(z, context)
        torch.testing.assert_close(z_back, z, atol=tol, rtol=0)
        torch.testing.assert_close(log_det_back, torch.zeros_like(log_det), atol=tol, rtol=0)
    # a loss that the identity does not minimize: some parameter gets a gradient
    target = torch.linspace(-1, 2, DIM, dtype=dtype)
    ((y - target).square().sum() - log_det.sum()).backward()
    moved = [p for p in flows.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved, "no parameter of a fresh flow gets a gradient"
    opt = torch.optim.SGD(flows.parameters(), lr=1e-2)
    opt.step()
    y2, _ = flows(z, context)
    assert (y2 - z).abs().max() > 1e-6  # one step leaves the identity
