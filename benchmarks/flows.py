"""Time per SVI step: ``FlowGuide(flow="iaf")`` against Pyro's ``AutoIAFNormal``.

Both guides use the same number of affine autoregressive transforms with the same hidden
width, on Bayesian factor analysis with the factors marginalized (synthetic 300 x 6 data,
two factors: 23 latent dimensions), ``Trace_ELBO`` with vectorized particles and Adam.
Ratios are ours / Pyro's (goal: at most 1.1). Timings alternate between the two guides
over several rounds (the order alternating, after 10 warm-up steps each); the ratio is the
median of per-round ratios, which tames the noise of a shared machine.

Usage::

    python -m benchmarks.flows --quick
    python -m benchmarks.flows --out flows.json
"""

from __future__ import annotations

import statistics

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal

from benchmarks._common import emit, parser, time_per_call
from pyro_dgm.inference.flows import FlowGuide
from pyro_dgm.models import FactorAnalysis


def make_svi(kind: str, model, x, num_flows: int, hidden: int, particles: int):
    pyro.clear_param_store()
    if kind == "ours":
        guide = FlowGuide(model, flow="iaf", num_flows=num_flows, hidden_dims=(hidden,))
    else:
        guide = AutoIAFNormal(model, hidden_dim=[hidden], num_transforms=num_flows)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    svi.step(x)  # set up the guide
    return svi


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--num-flows", type=int, default=None)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--particles", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)
    model = FactorAnalysis(6, 2, marginalize_latents=True, dtype=torch.float32)
    x = model.simulate(300, seed=args.seed).x.to(args.device)
    model = model.to(args.device)
    flows_list = [args.num_flows] if args.num_flows else ([2] if args.quick else [2, 4, 8])
    repeat, rounds = (20, 5) if args.quick else (50, 7)
    results, ratios = {}, {}
    for k in flows_list:
        times = {"ours": [], "pyro": []}
        svis = {kind: make_svi(kind, model, x, k, args.hidden, args.particles)
                for kind in times}
        for svi in svis.values():  # first steps of a process pay one-off costs
            for _ in range(10):
                svi.step(x)
        for r in range(rounds):  # the order alternates, so neither guide always goes first
            for kind in (("ours", "pyro") if r % 2 == 0 else ("pyro", "ours")):
                svi = svis[kind]
                times[kind].append(time_per_call(lambda s=svi: s.step(x), repeat=repeat,
                                                 warmup=2, rounds=1, device=args.device))
        ours, theirs = statistics.median(times["ours"]), statistics.median(times["pyro"])
        results[f"K={k}"] = {"flowguide_iaf_s_per_step": ours,
                             "autoiafnormal_s_per_step": theirs}
        ratios[f"flowguide_iaf_vs_autoiafnormal_K={k}"] = statistics.median(
            a / b for a, b in zip(times["ours"], times["pyro"], strict=True))
    settings = {"model": "FactorAnalysis(6, 2, marginalized), 300 rows, 23 latent dims",
                "hidden": [args.hidden], "particles": args.particles, "repeat": repeat,
                "rounds": rounds, "dtype": "float32"}
    return emit("flows", results, ratios, settings=settings, device=args.device,
                out=args.out)


if __name__ == "__main__":
    main()
