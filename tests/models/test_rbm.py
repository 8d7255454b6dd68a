import copy
import math

import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_dgm.data import load_digits
from pyro_dgm.models import RBM
from pyro_dgm.models import rbm as rbm_module
from pyro_dgm.models.rbm import binary_states
from pyro_dgm.models.rbm_training import CDTrainer


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny tensor ops, where intra-op threads only add overhead (and
    stall badly on a busy machine); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tolerance(dtype, float64, float32):
    return float64 if dtype == torch.float64 else float32


def _random_rbm(n_visible, n_hidden, *, scale=1.0, seed=0, dtype=torch.float64, device="cpu"):
    """An RBM with O(1) parameters, so the distribution is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, dtype=dtype)
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return rbm.to(device)


def _brute_force_log_z(rbm):
    """log sum over every (v, h) pair of exp(-E(v, h)), in float64."""
    rbm64 = copy.deepcopy(rbm).double().cpu()
    v = binary_states(rbm.n_visible, dtype=torch.float64)[:, None, :]
    h = binary_states(rbm.n_hidden, dtype=torch.float64)[None, :, :]
    with torch.no_grad():
        return float(torch.logsumexp(-rbm64.energy(v, h).reshape(-1), 0))


def _state_index(v):
    return (v.long() << torch.arange(v.shape[-1], device=v.device)).sum(-1)


# ---------------------------------------------------------------- exact answers
def test_binary_states_are_little_endian_and_complete():
    states = binary_states(3, dtype=torch.float64)
    assert states.shape == (8, 3)
    assert states[6].tolist() == [0.0, 1.0, 1.0]
    assert torch.equal(_state_index(states), torch.arange(8))
    assert torch.equal(binary_states(3, 2, 5), binary_states(3)[2:5].float())


def test_log_partition_matches_brute_force(dtype, device):
    rbm = _random_rbm(5, 4, dtype=dtype, device=device)
    expected = _brute_force_log_z(rbm)
    with torch.no_grad():
        for layer in ("auto", "hidden", "visible"):
            log_z = rbm.log_partition(layer)
            assert log_z.dtype == dtype and log_z.device.type == device.type
            assert abs(float(log_z) - expected) < tolerance(dtype, 1e-10, 1e-4), layer


def test_enumerating_visible_or_hidden_gives_the_same_log_z(dtype):
    rbm = _random_rbm(9, 6, scale=0.7, seed=1, dtype=dtype)
    with torch.no_grad():
        by_hidden = float(rbm.log_partition("hidden"))
        by_visible = float(rbm.log_partition("visible"))
    assert abs(by_hidden - by_visible) < tolerance(dtype, 1e-10, 1e-4) * abs(by_hidden)


def test_chunked_enumeration_matches_one_chunk(monkeypatch):
    rbm = _random_rbm(10, 7, seed=2)
    with torch.no_grad():
        whole = rbm.log_partition("visible")
        monkeypatch.setattr(rbm_module, "_CHUNK_ELEMENTS", 64)  # 8-state chunks
        chunked = rbm.log_partition("visible")
    assert abs(float(whole - chunked)) < 1e-10


def test_log_prob_sums_to_one_over_all_visible_states(dtype):
    rbm = _random_rbm(6, 8, seed=3, dtype=dtype)
    with torch.no_grad():
        total = rbm.log_prob(binary_states(6, dtype=dtype)).logsumexp(0)  # enumerates v
        hidden = (-rbm.hidden_free_energy(binary_states(8, dtype=dtype))
                  - rbm.log_partition()).logsumexp(0)
    assert abs(float(total)) < tolerance(dtype, 1e-12, 1e-5)
    assert abs(float(hidden)) < tolerance(dtype, 1e-12, 1e-5)


def test_free_energy_and_conditionals_match_the_joint():
    rbm = _random_rbm(4, 3, seed=4)
    v = binary_states(4, dtype=torch.float64)[:, None, :]
    h = binary_states(3, dtype=torch.float64)[None, :, :]
    with torch.no_grad():
        log_joint = -rbm.energy(v, h)                                  # (16, 8)
        free = -log_joint.logsumexp(1)
        assert torch.allclose(rbm.free_energy(v[:, 0]), free, atol=1e-12)
        # p(h_j = 1 | v) from the joint
        posterior = (log_joint - log_joint.logsumexp(1, keepdim=True)).exp()
        assert torch.allclose(rbm.hidden_probs(v[:, 0]), posterior @ h[0], atol=1e-12)
        prior_v = (log_joint - log_joint.logsumexp(0, keepdim=True)).exp()   # p(v | h)
        assert torch.allclose(rbm.visible_probs(h[0]), prior_v.T @ v[:, 0], atol=1e-12)


def test_log_prob_is_differentiable_and_its_gradient_matches_moments():
    rbm = _random_rbm(5, 3, scale=0.5, seed=5)
    v = torch.tensor([[1.0, 0, 1, 1, 0]], dtype=torch.float64)
    rbm.log_prob(v).sum().backward()
    states = binary_states(5, dtype=torch.float64)
    with torch.no_grad():
        p = rbm.log_prob(states).exp()
        # d log p(v) / d b = v - E_p[v]
        assert torch.allclose(rbm.b.grad, v[0] - p @ states, atol=1e-10)


# ---------------------------------------------------------------- sampling
def test_gibbs_samples_match_exact_distribution():
    """Histogram of 2**16 independent chains over all 64 visible states vs the exact p(v).

    Tolerance: for K states and N independent exact draws,
    E[TV] <= 1/2 sum_k sqrt(p_k (1 - p_k) / N) <= 1/2 sqrt(K / N) = 0.016 (0.0083 for this
    p), and TV has bounded differences 1/N, so P(TV >= E[TV] + t) <= exp(-2 N t^2)
    (McDiarmid): for t = 0.03 - 0.016 that is below 1e-11 (below 1e-26 with this p's 0.0083).
    A TV above 0.03 therefore means the sampler is wrong or not mixed after 50 steps (this
    RBM mixes in a few: TV ~ 0.006 from step 5 on), not bad luck; the seed is fixed anyway.
    """
    rbm = _random_rbm(6, 4, seed=6, dtype=torch.float32)
    num_chains, num_steps = 1 << 16, 50
    with torch.no_grad():
        exact = rbm.log_prob(binary_states(6)).exp()
        g = torch.Generator().manual_seed(0)
        init = torch.zeros(num_chains, 6)   # one start for all: the chains must mix
        v = rbm.sample(num_chains, num_steps, init=init, generator=g)
    assert v.shape == (num_chains, 6) and v.dtype == torch.float32
    empirical = torch.bincount(_state_index(v), minlength=64).double() / num_chains
    expected_tv_bound = 0.5 * float((exact.double() * (1 - exact.double()) / num_chains)
                                    .sqrt().sum())
    assert expected_tv_bound < 0.0085
    uniform_tv = 0.5 * float((exact - 1 / 64).abs().sum())
    assert uniform_tv > 0.2   # the target is far from uniform: the check has power
    tv = 0.5 * float((empirical - exact.double()).abs().sum())
    assert tv < 0.03, tv


def test_pyro_gibbs_kernel_on_the_rbm_program_matches_exact_distribution():
    """``pyro_dgm.inference.Gibbs`` (exact single-site conditionals) on ``rbm.model``.

    32768 vectorized chains, 2 draws each after 20 warm-up sweeps. Averaging a chain's two
    (correlated) draws cannot raise the variance of a state's frequency above that of one
    draw per chain, so E[TV] <= 1/2 sum_k sqrt(p_k (1 - p_k) / 32768) = 0.0117 for this p,
    and changing one chain moves TV by at most 1/32768 (McDiarmid):
    P(TV >= 0.03) <= exp(-2 * 32768 * 0.0183**2) < 1e-9.
    """
    inference = pytest.importorskip("pyro_dgm.inference")
    if not hasattr(inference, "Gibbs"):
        pytest.skip("pyro_dgm.inference.Gibbs is not available")
    rbm = _random_rbm(6, 4, seed=6, dtype=torch.float32).requires_grad_(False)
    exact = rbm.log_prob(binary_states(6)).exp().double()
    mcmc = inference.MCMC(inference.Gibbs(rbm.model), num_samples=2, warmup_steps=20,
                          num_chains=1 << 15, chain_method="vectorized",
                          disable_progbar=True)
    mcmc.run()
    samples = mcmc.get_samples()
    assert set(samples) == {f"v_{i}" for i in range(6)} | {f"h_{j}" for j in range(4)}
    v = torch.stack([samples[f"v_{i}"] for i in range(6)], -1)
    assert v.shape == (1 << 16, 6)
    empirical = torch.bincount(_state_index(v), minlength=64).double() / v.shape[0]
    assert 0.5 * float((exact * (1 - exact) / (1 << 15)).sqrt().sum()) < 0.012
    tv = 0.5 * float((empirical - exact).abs().sum())
    assert tv < 0.03, tv


def test_gibbs_joint_draws_and_generator_reproducibility(device):
    rbm = _random_rbm(3, 2, seed=7, device=device)
    make = lambda: torch.Generator(device=device).manual_seed(11)  # noqa: E731
    v1, h1 = rbm.sample(4096, 30, generator=make(), return_hidden=True)
    v2, h2 = rbm.sample(4096, 30, generator=make(), return_hidden=True)
    assert torch.equal(v1, v2) and torch.equal(h1, h2)
    assert v1.device.type == device.type and h1.shape == (4096, 2)
    # (v, h) is a joint draw: compare with p(v, h) over the 32 joint states
    with torch.no_grad():
        states_v = binary_states(3, dtype=torch.float64, device=device)[:, None, :]
        states_h = binary_states(2, dtype=torch.float64, device=device)[None, :, :]
        exact = (-rbm.energy(states_v, states_h) - rbm.log_partition()).exp().reshape(-1)
    index = _state_index(v1) * 4 + _state_index(h1)
    empirical = torch.bincount(index, minlength=32).double() / 4096
    # E[TV] <= 1/2 sqrt(32 / 4096) = 0.044; McDiarmid: P(TV > 0.1) <= exp(-2 * 4096 * 0.056**2)
    assert 0.5 * float((empirical - exact).abs().sum()) < 0.1


def test_batched_gibbs_keeps_leading_shape_and_dtype():
    rbm = RBM(5, 3, dtype=torch.float64)
    v, h = rbm.gibbs(torch.zeros(2, 7, 5, dtype=torch.float64), 3)
    assert v.shape == (2, 7, 5) and h.shape == (2, 7, 3) and v.dtype == torch.float64
    assert set(v.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def digits_subset():
    return load_digits(max_rows=500), load_digits(split="test")


@pytest.mark.parametrize("method, lr", [("cd", 0.1), ("pcd", 0.05)])
def test_training_raises_exact_log_likelihood_on_digits(digits_subset, method, lr):
    """64 visible, 12 hidden: log Z by enumerating the 4096 hidden states."""
    x, x_test = digits_subset
    g = torch.Generator().manual_seed(0)
    rbm = RBM(64, 12, generator=g).init_visible_bias(x)  # best independent-pixel start

    def mean_log_lik():
        with torch.no_grad():
            log_z = rbm.log_partition()
            return (float(rbm.log_prob(x, log_z=log_z).mean()),
                    float(rbm.log_prob(x_test, log_z=log_z).mean()))

    before, before_test = mean_log_lik()
    trainer = rbm.fit(x, method=method, k=1, epochs=30, batch_size=50, lr=lr, generator=g,
                      progress=False)
    after, after_test = mean_log_lik()
    assert len(trainer.history) == 30
    assert after > before + 1.0, (before, after)
    assert after_test > before_test + 1.0, (before_test, after_test)


def test_train_step_with_adam_and_persistent_chains():
    x = load_digits(max_rows=64, classes=[0, 1])
    rbm = RBM(64, 4)
    optimizer = torch.optim.Adam(rbm.parameters(), lr=1e-2)
    trainer = CDTrainer(rbm, optimizer, k=2, persistent=True, num_chains=10)
    w0 = rbm.W.detach().clone()
    gap = trainer.train_step(x[:16])
    assert gap.shape == () and not gap.requires_grad
    assert trainer.chains.shape == (10, 64)
    chains = trainer.chains
    trainer.train_step(x[16:32])
    assert trainer.chains is not chains and not torch.equal(rbm.W.detach(), w0)
    stops = []
    trainer.fit(x, epochs=5, batch_size=16, callback=lambda e, t: stops.append(e) or e >= 1)
    assert stops == [0, 1] and len(trainer.history) == 2


# ---------------------------------------------------------------- Pyro program
@torch.no_grad()
def test_pyro_model_log_density_is_minus_energy_up_to_a_constant():
    rbm = _random_rbm(3, 2, seed=8)
    const = -5 * math.log(2.0)
    for state in range(32):
        bits = binary_states(5, state, state + 1, dtype=torch.float64)[0]
        data = {f"v_{i}": bits[i] for i in range(3)} | {f"h_{j}": bits[3 + j] for j in range(2)}
        trace = poutine.trace(poutine.condition(rbm.model, data)).get_trace()
        sites = {name for name, site in trace.nodes.items()
                 if site["type"] == "sample" and not site["is_observed"] or name in data}
        assert sites == set(data)
        expected = -rbm.energy(bits[:3], bits[3:]) + const
        assert abs(float(trace.log_prob_sum() - expected)) < 1e-12
        marginal = poutine.trace(poutine.condition(
            rbm.model, {k: data[k] for k in ("v_0", "v_1", "v_2")})).get_trace(
            marginalize_hidden=True)
        assert abs(float(marginal.log_prob_sum()
                         - (-rbm.free_energy(bits[:3]) - 3 * math.log(2.0)))) < 1e-12


def test_pyro_enumeration_of_the_hidden_sites_gives_the_free_energy():
    rbm = _random_rbm(4, 3, seed=9)
    v = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.float64)
    model = config_enumerate(rbm.model)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda v: None, v)
    # -log sum_h p_model(v, h) with the Bernoulli(1/2) base measure
    expected = float(rbm.free_energy(v).detach().sum()) + 2 * 7 * math.log(2.0)
    assert abs(loss - expected) < 1e-10


# ---------------------------------------------------------------- bad input
def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="n_hidden"):
        RBM(6, 0)
    with pytest.raises(ValueError, match="n_visible"):
        RBM(0, 3)
    with pytest.raises(ValueError, match="both layers are too large"):
        RBM(30, 25).log_partition()
    with pytest.raises(ValueError, match="n_visible=30 > max_units=20"):
        RBM(30, 4).log_partition("visible")
    assert RBM(30, 4).log_partition().isfinite()


def test_bad_data_raise_naming_it():
    rbm = RBM(6, 3)
    with pytest.raises(ValueError, match="data must be binary"):
        rbm.fit(torch.full((4, 6), 0.5), progress=False)
    with pytest.raises(ValueError, match="data must have 6 columns"):
        rbm.fit(torch.zeros(4, 5), progress=False)
    with pytest.raises(ValueError, match="batch must be binary"):
        CDTrainer(rbm).train_step(torch.full((4, 6), 2.0))
    with pytest.raises(ValueError, match="v must be binary"):
        rbm.log_prob(torch.full((2, 6), 0.3))
    with pytest.raises(ValueError, match="v must have 6 columns"):
        rbm.log_prob(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="init must have shape"):
        rbm.sample(5, 2, init=torch.zeros(4, 6))
    with pytest.raises(ValueError, match="unknown method"):
        rbm.fit(torch.zeros(4, 6), method="cd3")
    with pytest.raises(ValueError, match="k must be >= 1"):
        rbm.fit(torch.zeros(4, 6), k=0)
    with pytest.raises(ValueError, match="unknown layer"):
        rbm.log_partition("both")
    with pytest.raises(ValueError, match="v_0"):
        poutine.trace(rbm.model).get_trace(torch.full((6,), 0.5)).log_prob_sum()
