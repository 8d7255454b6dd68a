"""Time per SVI step of an IWAE-trained VAE: our IWAE vs Pyro's RenyiELBO vs hand-written.

The VAE of Burda et al. (2015) at digits scale: 64 binarized pixels (scikit-learn's 8×8
digits, intensity >= 8), tanh MLPs 200-200 for encoder and decoder, 10 latent dimensions,
Bernoulli likelihood. One step = draw the K-particle bound on a batch, backpropagate, Adam.
Every method gets its own copy of the same initial networks and a ``torch.optim.Adam``:

- ``iwae``: :class:`pyro_dgm.inference.IWAE` (``loss_and_grads``), ``estimator="iwae"``;
- ``iwae_module``: the same through ``IWAE()(model, guide)`` (``differentiable_loss``);
- ``renyi``: Pyro's ``RenyiELBO(alpha=0, vectorize_particles=True)`` (``loss_and_grads``);
- ``hand``: a pure-PyTorch IWAE step with the same networks (no Pyro);
- ``dreg`` and ``stl``: our IWAE with those gradient estimators.

Two small float64 experiments complete the record: ``gradient_snr`` (the guide gradient's
signal-to-noise ratio for IWAE, STL and DReG at K = 1, 8, 64, 512 on the Gaussian toy of
Rainforth et al. 2018) and
``mass_covering`` (posterior variances of a mean-field guide fitted by KL-VI and by the
perturbative bound, against the exact ones).

Methods are timed in interleaved rounds (so that load on a shared machine hits all of them
alike); each figure is the median over rounds of the mean step time, and each ratio the
median over rounds of the per-round ratio. Pyro validation is off (``--validate`` turns it
on for all Pyro methods).

    python -m benchmarks.objectives            # batch 128/K=50 and batch 16/K=5
    python -m benchmarks.objectives --quick    # fewer rounds, under a minute
"""

from __future__ import annotations

import math
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import RenyiELBO
from torch import nn

from benchmarks._common import emit, parser, sync
from pyro_dgm.inference import IWAE

LATENT, HIDDEN = 10, 200
CONFIGS = ((128, 50), (16, 5))  # (batch size, particles)


def load_binarized_digits(device) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data, dtype=torch.float32, device=device)
    return (x >= 8).to(torch.float32)


def mlp(inp: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                         nn.Linear(HIDDEN, out))


class Model(nn.Module):
    """p(z) = N(0, I), p(x | z) = Bernoulli(decoder(z))."""

    def __init__(self, decoder: nn.Module, name: str):
        super().__init__()
        self.decoder, self.name = decoder, name
        self.register_buffer("zero", torch.zeros(LATENT))
        self.register_buffer("one", torch.ones(LATENT))

    def forward(self, x):
        # param sites: RenyiELBO backpropagates only when its traces hold some
        pyro.module(f"{self.name}_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.zero, self.one).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


class Guide(nn.Module):
    """q(z | x) = N(mu(x), diag sigma(x)^2) from one encoder with 2 * LATENT outputs."""

    def __init__(self, encoder: nn.Module, name: str):
        super().__init__()
        self.encoder, self.name = encoder, name

    def forward(self, x):
        pyro.module(f"{self.name}_encoder", self.encoder)
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1))


def make_nets(seed: int, device):
    torch.manual_seed(seed)
    return mlp(64, 2 * LATENT).to(device), mlp(LATENT, 64).to(device)


def pyro_step(objective, model, guide, differentiable: bool):
    params = list(model.parameters()) + list(guide.parameters())
    optim = torch.optim.Adam(params, lr=1e-3)
    module = objective(model, guide) if differentiable else None

    def step(x):
        optim.zero_grad(set_to_none=True)
        if module is not None:
            loss = module(x)
            loss.backward()
            value = loss.detach()
        else:
            value = objective.loss_and_grads(model, guide, x)
        optim.step()
        return value

    return step


def hand_step(encoder, decoder, K: int):
    """The IWAE step written directly in PyTorch."""
    optim = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_k = math.log(K)

    def step(x):
        optim.zero_grad(set_to_none=True)
        loc, raw = encoder(x).chunk(2, -1)
        scale = nn.functional.softplus(raw) + 1e-4
        eps = torch.randn((K,) + loc.shape, dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps
        log_q = (-0.5 * eps * eps - scale.log() - half_log_2pi).sum(-1)
        log_pz = (-0.5 * z * z - half_log_2pi).sum(-1)
        logits = decoder(z)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        loss = -(torch.logsumexp(log_px + log_pz - log_q, 0) - log_k).sum()
        loss.backward()
        optim.step()
        return loss.detach()

    return step


def build_methods(K: int, seed: int, device) -> dict:
    methods = {}

    def nets(name):
        encoder, decoder = make_nets(seed, device)
        return Model(decoder, name), Guide(encoder, name)

    methods["iwae"] = pyro_step(IWAE(K, "iwae", max_plate_nesting=1), *nets("iwae"), False)
    methods["iwae_module"] = pyro_step(IWAE(K, "iwae", max_plate_nesting=1), *nets("module"),
                                       True)
    methods["renyi"] = pyro_step(RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True,
                                           max_plate_nesting=1), *nets("renyi"), False)
    methods["hand"] = hand_step(*make_nets(seed, device), K)
    methods["dreg"] = pyro_step(IWAE(K, "dreg", max_plate_nesting=1), *nets("dreg"), False)
    methods["stl"] = pyro_step(IWAE(K, "stl", max_plate_nesting=1), *nets("stl"), False)
    return methods


def time_config(data, batch: int, K: int, *, rounds: int, repeat: int, seed: int, device):
    methods = build_methods(K, seed, device)
    gen = torch.Generator().manual_seed(seed)
    batches = [data[torch.randperm(len(data), generator=gen)[:batch]] for _ in range(64)]
    for step in methods.values():  # warm up (allocator, lazy init)
        for b in batches[:5]:
            step(b)
    sync(device)
    per_round = {name: [] for name in methods}
    for r in range(rounds):
        for name, step in methods.items():
            start = time.perf_counter()
            for i in range(repeat):
                step(batches[(r * repeat + i) % len(batches)])
            sync(device)
            per_round[name].append((time.perf_counter() - start) / repeat)
    ms = {name: 1e3 * statistics.median(v) for name, v in per_round.items()}

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))

    ratios = {
        "iwae_vs_renyi": ratio("iwae", "renyi"),
        "iwae_vs_hand": ratio("iwae", "hand"),
        "iwae_module_vs_hand": ratio("iwae_module", "hand"),
        "renyi_vs_hand": ratio("renyi", "hand"),
        "dreg_vs_iwae": ratio("dreg", "iwae"),
        "stl_vs_iwae": ratio("stl", "iwae"),
    }
    return ms, ratios


def gradient_snr(*, reps: int, seed: int, particles=(1, 8, 64, 512)) -> dict:
    """Signal-to-noise ratio of the guide gradient for IWAE, STL and DReG: the mean over
    the guide's parameters of |mean| / sd over ``reps`` draws, on the Gaussian toy of
    Rainforth et al. (2018) (z in R^20, p(z) = N(mu, I), p(x | z) = N(z, I), 4 data points)
    with the optimal amortized guide N(x/2 + mu/2, I/2) perturbed by N(0, 0.1^2) noise;
    float64. ``dreg_vs_iwae_max_z``: the largest |z| of the difference of the two mean
    gradients over the parameters (small: both unbiased for the same gradient)."""
    f64, D, N = torch.float64, 20, 4
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=gen, dtype=f64)
    x = mu + math.sqrt(2) * torch.randn(N, D, generator=gen, dtype=f64)
    A = (torch.eye(D, dtype=f64) / 2 + 0.1 * torch.randn(D, D, generator=gen, dtype=f64))
    b = (mu / 2 + 0.1 * torch.randn(D, generator=gen, dtype=f64))
    log_s = (math.log(0.5) / 2 + 0.1 * torch.randn(D, generator=gen, dtype=f64))
    params = [p.requires_grad_() for p in (A, b, log_s)]

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ A.T + b, log_s.exp()).to_event(1))

    pyro.set_rng_seed(seed)
    out = {}
    for K in particles:
        draws = {}
        for estimator in ("iwae", "stl", "dreg"):
            objective = IWAE(K, estimator, max_plate_nesting=1)
            rows = []
            for _ in range(reps):
                loss = objective.differentiable_loss(model, guide, x)
                rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
            draws[estimator] = g = torch.stack(rows)
            out[f"K{K}_snr_{estimator}"] = float((g.mean(0).abs() / g.std(0)).mean())
        iwae, dreg = draws["iwae"], draws["dreg"]
        se = (iwae.var(0) / reps + dreg.var(0) / reps).sqrt()
        out[f"K{K}_dreg_vs_iwae_max_z"] = float(((iwae.mean(0) - dreg.mean(0)).abs() / se).max())
        out[f"K{K}_dreg_vs_iwae_variance_ratio"] = float(dreg.var(0).sum() / iwae.var(0).sum())
    return out


def mass_covering(*, steps: int, seed: int) -> dict:
    """Posterior variances of a mean-field guide fitted by KL-VI and by the perturbative
    bound (order 3, 16 particles), against the exact ones: FA with fixed parameters whose
    posterior has correlation about -0.75 (6 observed, 2 factors, 16 points), float64."""
    from pyro.infer import SVI, Trace_ELBO

    from pyro_dgm.inference import PerturbativeELBO
    from pyro_dgm.models import FactorAnalysis, fa_posterior

    f64 = torch.float64
    W = torch.tensor([[1.0, 0.5], [1.0, 0.8], [0.6, 0.4], [1.2, 0.8], [0.9, 0.7], [1.0, 0.5]],
                     dtype=f64)
    psi, loc = torch.full((6,), 0.8, dtype=f64), torch.zeros(6, dtype=f64)
    fa = FactorAnalysis(6, 2, loc=loc, W=W, psi=psi)
    x = fa.simulate(16, seed=1).x
    _, cov = fa_posterior(x, loc, W, psi)

    def guide(x):
        m = pyro.param("m", x.new_zeros(len(x), 2))
        s = pyro.param("s", x.new_full((2,), 0.5), constraint=dist.constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(m, s).to_event(1))

    out = {"exact_variance": cov.diagonal().tolist(),
           "exact_correlation": float(cov[0, 1] / cov.diagonal().prod().sqrt()),
           "kl_optimum_variance": (1 / torch.linalg.inv(cov).diagonal()).tolist()}
    objectives = {
        "kl": Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1),
        "perturbative_K3": PerturbativeELBO(3, 16, max_plate_nesting=1),
        "perturbative_K5": PerturbativeELBO(5, 16, max_plate_nesting=1),
    }
    for name, objective in objectives.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.05 ** (1 / steps)})
        svi = SVI(fa, guide, optim, objective)
        for _ in range(steps):
            svi.step(x)
        out[f"{name}_variance"] = (pyro.param("s").detach() ** 2).tolist()
    pyro.clear_param_store()
    return out


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--repeat", type=int, default=None, help="steps per method per round")
    p.add_argument("--validate", action="store_true", help="keep Pyro validation on")
    args = p.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    device = torch.device(args.device)
    pyro.enable_validation(args.validate)
    data = load_binarized_digits(device)
    results, ratios = {}, {}
    for batch, K in CONFIGS:
        repeat = args.repeat or ((5 if args.quick else 10) if batch >= 64 else
                                 (20 if args.quick else 50))
        key = f"batch{batch}_K{K}"
        ms, rat = time_config(data, batch, K, rounds=rounds, repeat=repeat, seed=args.seed,
                              device=device)
        results[key] = {f"{name}_ms": value for name, value in ms.items()}
        ratios.update({f"{key}_{name}": value for name, value in rat.items()})
    results["gradient_snr"] = gradient_snr(reps=50 if args.quick else 300, seed=args.seed)
    results["mass_covering"] = mass_covering(steps=300 if args.quick else 600, seed=args.seed)
    settings = {"configs": [{"batch": b, "K": k} for b, k in CONFIGS], "rounds": rounds,
                "latent": LATENT, "hidden": [HIDDEN, HIDDEN], "pyro_validation": args.validate,
                "dtype": "float32", "optimizer": "torch.optim.Adam(lr=1e-3)"}
    return emit("objectives", results, ratios, settings=settings, device=args.device,
                out=args.out)


if __name__ == "__main__":
    main()
