"""KL(q||p) of FlowGuide on the four 2-D energy targets of Rezende & Mohamed (2015).

For every target U1-U4, flow (planar, radial, iaf, realnvp) and K in {2, 8, 32}: fit
``FlowGuide(target, flow=..., num_flows=K)`` (its defaults) with vectorized ``Trace_ELBO``
and ClippedAdam (rate decayed 10x over the run), then report

    KL(q||p) = E_q[log q(z) + U(z)] + log Z        (exact log Z, 20,000 draws)

and write one density PNG per target (histograms of 200,000 guide draws) to ``--plots``.

Usage::

    python -m benchmarks.energy_targets --quick
    python -m benchmarks.energy_targets --steps 2000 --plots docs/img --out energy.json
    python -m benchmarks.energy_targets --targets U1 --flows realnvp --ks 8 --steps 4000
    python -m benchmarks.energy_targets --targets U1 --flows planar --ks 32 --steps 20000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from benchmarks._common import emit, parser
from pyro_dgm.inference.flows import FLOWS, FlowGuide
from pyro_dgm.models.energy import ENERGIES, EnergyTarget, energy_kl

#: Adam learning rates: simple planar/radial parameters take larger steps than networks
LEARNING_RATES = {"planar": 1e-2, "radial": 1e-2, "iaf": 3e-3, "realnvp": 3e-3}


def fit(target: EnergyTarget, flow: str, num_flows: int, steps: int, particles: int,
        seed: int) -> FlowGuide:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = FlowGuide(target, flow=flow, num_flows=num_flows)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0)
    optim = pyro.optim.ClippedAdam({"lr": LEARNING_RATES[flow], "lrd": 0.1 ** (1 / steps)})
    svi = SVI(target, guide, optim, elbo)
    for _ in range(steps):
        svi.step()
    return guide


@torch.no_grad()
def draws(guide, n: int) -> torch.Tensor:
    with pyro.plate("draws", n, dim=-1):
        return guide()["z"]


def plot_target(name: str, target: EnergyTarget, samples: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flows = sorted({f for f, _ in samples}, key=list(FLOWS).index)
    ks = sorted({k for _, k in samples})
    a = 4.0
    grid = torch.linspace(-a, a, 200)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1)
    true = torch.exp(-target.energy(z) - target.log_z)
    fig, axes = plt.subplots(len(flows), len(ks) + 1, figsize=(2.2 * (len(ks) + 1),
                                                              2.2 * len(flows)),
                             squeeze=False)
    for i, flow in enumerate(flows):
        axes[i, 0].imshow(true, origin="lower", extent=(-a, a, -a, a), cmap="viridis")
        axes[i, 0].set_title(f"{name}: exp(-U)/Z", fontsize=8)
        for j, k in enumerate(ks):
            ax = axes[i, j + 1]
            s, kl = samples.get((flow, k), (None, None))
            if s is not None:
                ax.hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=120,
                          range=[[-a, a], [-a, a]], cmap="viridis")
                ax.set_title(f"{flow} K={k}: KL {kl:.3f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(ENERGIES))
    p.add_argument("--flows", default=",".join(FLOWS))
    p.add_argument("--ks", default="2,8,32")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--particles", type=int, default=128)
    p.add_argument("--kl-draws", type=int, default=20_000)
    p.add_argument("--plots", default=None, help="directory for the density PNGs")
    args = p.parse_args(argv)
    if args.quick:
        args.targets, args.flows, args.ks = "U1,U2", "planar,realnvp", "2"
        args.steps, args.particles = 150, 64
    torch.set_num_threads(1)
    targets = args.targets.split(",")
    flows = args.flows.split(",")
    ks = [int(k) for k in args.ks.split(",")]
    results = {}
    for name in targets:
        target = EnergyTarget(name)
        samples = {}
        for flow in flows:
            for k in ks:
                start = time.perf_counter()
                guide = fit(target, flow, k, args.steps, args.particles, args.seed)
                wall = time.perf_counter() - start
                kl = energy_kl(target, guide, args.kl_draws)
                results[f"{name}/{flow}/K={k}"] = {"kl": kl, "steps": args.steps,
                                                   "fit_s": wall}
                print(f"{name} {flow} K={k}: KL {kl:.4f} ({wall:.0f} s)", file=sys.stderr,
                      flush=True)
                if args.plots:
                    samples[(flow, k)] = (draws(guide, 200_000), kl)
        if args.plots:
            out = Path(args.plots)
            out.mkdir(parents=True, exist_ok=True)
            plot_target(name, target, samples, out / f"energy_{name}.png")
    settings = {"steps": args.steps, "particles": args.particles, "kl_draws": args.kl_draws,
                "learning_rates": LEARNING_RATES, "optimizer": "ClippedAdam, lr decayed 10x",
                "box": "U1 on R^2, U2-U4 on [-4, 4]^2"}
    return emit("energy_targets", results, {}, settings=settings, out=args.out)


if __name__ == "__main__":
    main()
