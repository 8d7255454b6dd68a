"""Training throughput of a DLGM (VAE) under ``pyro-dgm``'s loop vs a pure-PyTorch VAE loop.

Both train the same networks (``DLGM(64, [10], hidden_dims=[100, 100])`` and its
``DLGMGuide``: tanh MLPs 64-100-100-20 and 10-100-100-64, Bernoulli likelihood) on the
binarized 8×8 digits with Adam, batch 100, index minibatches of a 1500-image training set:

- ``ours``: the step of :func:`pyro_dgm.dlgm.train`, ``loss_module(x, subsample=idx)``
  with ``loss_module = objective(model, guide)`` (``Trace_ELBO`` for k=1, ``IWAE`` for k=5),
  then ``backward`` and ``Adam.step``;
- ``hand``: the same bound written by hand in PyTorch on copies of the same networks
  (reparameterized sample, Bernoulli log-likelihood with logits, Gaussian log densities,
  log-sum-exp over the k particles, scale N/B).

Steps are timed in interleaved rounds (load on the shared machine hits both alike); each
figure is the median over rounds, and the ratio ``ours_vs_hand`` is time(ours)/time(hand)
(goal <= 1.3). Pyro validation is off for timing, one torch thread.

    python -m benchmarks.dlgm --quick
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from benchmarks._common import emit, parser
from pyro_dgm.data import load_digits
from pyro_dgm.inference import IWAE
from pyro_dgm.models import DLGM, DLGMGuide


def hand_step_fn(model, guide, x, k, batch, lr):
    enc, dec = copy.deepcopy(guide.nets[0]), copy.deepcopy(model.decoder)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    n = len(x)
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def step(idx):
        xb = x[idx]
        loc, raw = enc(xb).chunk(2, -1)
        scale = F.softplus(raw + 0.5413)
        eps = torch.randn((k,) + loc.shape, dtype=x.dtype)
        z = loc + scale * eps
        logits = dec(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits),
                                                     reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - scale.log() - half_log_2pi).sum(-1)
        log_w = log_px + log_pz - log_qz
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        loss = -bound.sum() * (n / len(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def ours_step_fn(model, guide, x, k, lr):
    model, guide = copy.deepcopy(model), copy.deepcopy(guide)
    objective = pyro.infer.Trace_ELBO(num_particles=1, max_plate_nesting=1) if k == 1 \
        else IWAE(num_particles=k, max_plate_nesting=1)
    loss_module = objective(model, guide)
    opt = torch.optim.Adam(loss_module.parameters(), lr=lr)

    def step(idx):
        loss = loss_module(x, subsample=idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    pyro.set_rng_seed(args.seed)
    rounds, steps = (5, 15) if args.quick else (15, 45)
    x = load_digits(binarize="fixed", dtype=torch.float32)
    results, ratios = {}, {}
    with pyro.settings.context(module_local_params=True):
        for k in (1, 5):
            model = DLGM(64, [10], hidden_dims=[100, 100])
            guide = DLGMGuide(model)
            fns = {"ours": ours_step_fn(model, guide, x, k, 1e-3),
                   "hand": hand_step_fn(model, guide, x, k, args.batch_size, 1e-3)}
            g = torch.Generator().manual_seed(args.seed)
            batches = torch.randperm(len(x), generator=g).split(args.batch_size)
            times = {name: [] for name in fns}
            for fn in fns.values():  # warm-up
                for idx in batches[:3]:
                    fn(idx)
            for r in range(rounds):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    for i in range(steps):
                        fn(batches[(r * steps + i) % len(batches)])
                    times[name].append((time.perf_counter() - start) / steps)
            per_round = [o / h for o, h in zip(times["ours"], times["hand"], strict=True)]
            for name in fns:
                sec = statistics.median(times[name])
                results[f"k{k}_{name}_seconds_per_step"] = sec
                results[f"k{k}_{name}_images_per_second"] = args.batch_size / sec
            ratios[f"k{k}_ours_vs_hand_time"] = statistics.median(per_round)
    emit("dlgm", results, ratios, settings={
        "batch_size": args.batch_size, "latent_dims": [10], "hidden_dims": [100, 100],
        "rounds": rounds, "steps_per_round": steps, "threads": 1, "validation": False,
        "quick": args.quick}, device=args.device, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
