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
Rainforth et al. 2018, as in Tucker et al. 2018) and
``mass_covering`` (posterior variances of a mean-field guide fitted by KL-VI and by the
perturbative bound, against the exact ones).

Methods are timed in interleaved rounds, in a shuffled order each round (so that load on a
shared machine hits all of them alike); each figure is the median over rounds of the mean
step time, wall clock (``*_ms``) and process CPU time (``*_cpu_ms``, less sensitive to other
processes), and each ratio the median over rounds of the per-round ratio (``*_cpu``: of CPU
times). Pyro validation is off (``--validate`` turns it
on for all Pyro methods).

    python -m benchmarks.objectives                  # everything (a few minutes on 2 cores)
    python -m benchmarks.objectives --quick          # fewer rounds and draws, under a minute
    python -m benchmarks.objectives --only timing    # one section: timing, snr or mass
"""

from __future__ import annotations

import math
import random
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
        for b in batches[:3]:
            step(b)
    sync(device)
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    order = list(methods)
    shuffle = random.Random(seed)
    for r in range(rounds):
        shuffle.shuffle(order)  # no method always runs first (or right after another)
        for name in order:
            step = methods[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(repeat):
                step(batches[(r * repeat + i) % len(batches)])
            sync(device)
            wall[name].append((time.perf_counter() - start) / repeat)
            cpu[name].append((time.process_time() - start_cpu) / repeat)
    ms = {f"{name}_ms": 1e3 * statistics.median(v) for name, v in wall.items()}
    ms.update({f"{name}_cpu_ms": 1e3 * statistics.median(v) for name, v in cpu.items()})

    pairs = {"iwae_vs_renyi": ("iwae", "renyi"), "iwae_vs_hand": ("iwae", "hand"),
             "iwae_module_vs_hand": ("iwae_module", "hand"), "renyi_vs_hand": ("renyi", "hand"),
             "dreg_vs_iwae": ("dreg", "iwae"), "stl_vs_iwae": ("stl", "iwae")}
    ratios = {}
    for key, (a, b) in pairs.items():
        for label, times in (("", wall), ("_cpu", cpu)):
            ratios[key + label] = statistics.median(
                x / y for x, y in zip(times[a], times[b], strict=True))
    return ms, ratios


def gradient_snr(*, reps: int, seed: int, particles=(1, 8, 64, 512)) -> dict:
    """Signal-to-noise ratio of the guide gradient for IWAE, STL and DReG, |mean| / sd over
    ``reps`` draws, averaged (``snr``) and its median (``snr_median``) over the guide's
    parameters, in the setting of Rainforth et al. (2018) and Tucker et al. (2018): z in
    R^20, p(z) = N(mu, I), p(x | z) = N(z, I), one data point, the optimal amortized guide
    N(Ax + b, diag s^2) with A = I/2, b = mu/2, s^2 = 1/2 perturbed by N(0, 0.01^2) noise;
    float64. ``dreg_vs_iwae_max_z``: the largest |z| of the difference of the two mean
    gradients over the parameters (small: both unbiased for the same gradient)."""
    f64, D, N, perturbation = torch.float64, 20, 1, 0.01
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=gen, dtype=f64)
    x = mu + math.sqrt(2) * torch.randn(N, D, generator=gen, dtype=f64)
    A = torch.eye(D, dtype=f64) / 2 + perturbation * torch.randn(D, D, generator=gen, dtype=f64)
    b = mu / 2 + perturbation * torch.randn(D, generator=gen, dtype=f64)
    log_s = math.log(0.5) / 2 + perturbation * torch.randn(D, generator=gen, dtype=f64)
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
            snr = g.mean(0).abs() / g.std(0)
            out[f"K{K}_snr_{estimator}"] = float(snr.mean())
            out[f"K{K}_snr_median_{estimator}"] = float(snr.median())
        iwae, dreg = draws["iwae"], draws["dreg"]
        se = (iwae.var(0) / reps + dreg.var(0) / reps).sqrt()
        out[f"K{K}_dreg_vs_iwae_max_z"] = float(((iwae.mean(0) - dreg.mean(0)).abs() / se).max())
        out[f"K{K}_dreg_vs_iwae_variance_ratio"] = float(dreg.var(0).sum() / iwae.var(0).sum())
    return out


def mass_covering(*, steps: int, seed: int, orders=(3, 5)) -> dict:
    """Posterior variances of a mean-field guide fitted by KL-VI and by the perturbative
    bound (order 3, 16 particles), against the exact ones: FA with fixed parameters whose
    posterior has correlation about -0.8 (6 observed, 2 factors, 16 points), float64."""
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
    objectives = {"kl": Trace_ELBO(num_particles=16, vectorize_particles=True,
                                   max_plate_nesting=1)}
    objectives.update({f"perturbative_K{order}": PerturbativeELBO(order, 16, max_plate_nesting=1)
                       for order in orders})
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


SECTIONS = ("timing", "snr", "mass")


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--repeat", type=int, default=None, help="steps per method per round")
    p.add_argument("--validate", action="store_true", help="keep Pyro validation on")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: tiny tensors, shared cores)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    args = p.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    rounds = args.rounds or (3 if args.quick else 15)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.enable_validation(args.validate)
    results, ratios = {}, {}
    if "timing" in only:
        data = load_binarized_digits(device)
        for batch, K in CONFIGS:
            repeat = args.repeat or ((3 if args.quick else 10) if batch >= 64 else
                                     (10 if args.quick else 50))
            key = f"batch{batch}_K{K}"
            ms, rat = time_config(data, batch, K, rounds=rounds, repeat=repeat,
                                  seed=args.seed, device=device)
            results[key] = ms
            ratios.update({f"{key}_{name}": value for name, value in rat.items()})
    if "snr" in only:
        results["gradient_snr"] = gradient_snr(
            reps=30 if args.quick else 300, seed=args.seed,
            particles=(1, 64) if args.quick else (1, 8, 64, 512))
    if "mass" in only:
        results["mass_covering"] = mass_covering(
            steps=200 if args.quick else 600, seed=args.seed,
            orders=(3,) if args.quick else (3, 5))
    settings = {"sections": only, "configs": [{"batch": b, "K": k} for b, k in CONFIGS],
                "rounds": rounds, "latent": LATENT, "hidden": [HIDDEN, HIDDEN],
                "pyro_validation": args.validate, "dtype": "float32", "threads": args.threads,
                "optimizer": "torch.optim.Adam(lr=1e-3)"}
    return emit("objectives", results, ratios, settings=settings, device=args.device,
                out=args.out)


if __name__ == "__main__":
    main()
