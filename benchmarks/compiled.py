"""Per-step time of compiled Pyro steps (``compile_loss``) vs the ordinary Pyro step and vs
hand-written PyTorch.

Configurations (each method gets its own copy of the same initial parameters):

- ``dlgm_k1``, ``dlgm_k5``: the DLGM training step of ``benchmarks/dlgm.py`` (64-100-100-10
  digits VAE, batch 100 of index minibatches, Adam): ``pyro`` = ``objective(model, guide)``
  with ``Trace_ELBO`` (k=1) or ``IWAE(k=5)``, ``hand`` = the same bound written in PyTorch;
- ``iwae_b16_K5``, ``iwae_b128_K50``: the IWAE step of ``benchmarks/objectives.py``
  (200-200 tanh MLPs, Adam): ``pyro`` = ``IWAE(K)(model, guide)``, ``hand`` = PyTorch;
- ``fa_autonormal``, ``fa_mvn``: one ``SVI.step`` on the comparison's ``fa`` problem (51
  dimensions, wine data) with ``Trace_ELBO(num_particles=4, vectorized)`` and ClippedAdam,
  as :func:`pyro_dgm.compare.methods.fitting.fit_svi` runs it (no hand-written peer);
- ``potential_logreg``, ``potential_fa``: the batched potential of 64 chains of
  ``benchmarks/mcmc.py``'s logistic regression (breast cancer, 11) and of the ``fa``
  posterior (51), value only (``*_value``, as ``RandomWalkMH`` calls it) and value and
  gradient (``*_grad``, as ``ChEESHMC``), ordinary vs ``CompiledPotential`` (``fx``); the
  logistic regression also by hand.

Each compiled method is ``compile_loss(objective, backend=b)`` for the backends asked for
(``fx``: the captured graph run eagerly; ``inductor``: ``torch.compile`` of it). Its first
step (trace + compile) is timed separately (``*_compile_s``); every method then takes three
warm-up steps. Steps are timed in interleaved rounds in a shuffled order; figures are medians
over rounds, ratios the median of per-round ratios (``<cfg>_<b>_vs_hand``,
``<cfg>_<b>_vs_pyro``). One torch thread, Pyro validation off.

    python -m benchmarks.compiled --quick                    # fx only, under a minute
    python -m benchmarks.compiled --backends fx,inductor     # full
"""

from __future__ import annotations

import copy
import random
import statistics
import time

import pyro
import torch

from benchmarks import dlgm as dlgm_bench
from benchmarks import objectives as iwae_bench
from benchmarks._common import emit, parser, sync
from pyro_dgm.inference import IWAE, compile_loss


def _cycle(fn, items):
    state = {"i": 0}

    def step():
        fn(items[state["i"] % len(items)])
        state["i"] += 1
    return step


def dlgm_methods(k: int, backends, seed: int, device) -> dict:
    from pyro_dgm.data import load_digits
    from pyro_dgm.models import DLGM, DLGMGuide

    x = load_digits(binarize="fixed", dtype=torch.float32).to(device)
    torch.manual_seed(seed)
    model = DLGM(64, [10], hidden_dims=[100, 100]).to(device)
    guide = DLGMGuide(model).to(device)
    batches = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)
                             ).split(100)
    batches = [b.to(device) for b in batches]

    def objective():
        return pyro.infer.Trace_ELBO(max_plate_nesting=1) if k == 1 else \
            IWAE(num_particles=k, max_plate_nesting=1)

    def module_step(loss):
        module = loss(copy.deepcopy(model), copy.deepcopy(guide))
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)

        def step(idx):
            value = module(x, subsample=idx)
            opt.zero_grad()
            value.backward()
            opt.step()
        step.loss = loss
        return _cycle(step, batches), loss

    methods = {"hand": (_cycle(dlgm_bench.hand_step_fn(model, guide, x, k, 100, 1e-3),
                               batches), None),
               "pyro": module_step(objective())}
    for b in backends:
        methods[b] = module_step(compile_loss(objective(), backend=b))
    return methods


def iwae_methods(batch: int, K: int, backends, seed: int, device) -> dict:
    data = iwae_bench.load_binarized_digits(device)
    gen = torch.Generator().manual_seed(seed)
    batches = [data[torch.randperm(len(data), generator=gen)[:batch]] for _ in range(64)]

    def nets(name):
        encoder, decoder = iwae_bench.make_nets(seed, device)
        return iwae_bench.Model(decoder, name), iwae_bench.Guide(encoder, name)

    methods = {"hand": (_cycle(iwae_bench.hand_step(*iwae_bench.make_nets(seed, device), K),
                               batches), None)}
    losses = {"pyro": IWAE(K, max_plate_nesting=1)}
    losses.update({b: compile_loss(IWAE(K, max_plate_nesting=1), backend=b) for b in backends})
    for name, loss in losses.items():
        methods[name] = (_cycle(iwae_bench.pyro_step(loss, *nets(name), True), batches), loss)
    return methods


def fa_methods(guide_type: str, backends, seed: int, device) -> dict:
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    from pyro_dgm.compare.problems.fa import build_fa
    from pyro_dgm.compare.settings import default_settings

    problem = build_fa(default_settings(quick=True, device=str(device)))
    methods = {}
    for name in ("pyro", *backends):
        guide = (AutoNormal if guide_type == "autonormal" else AutoMultivariateNormal)(
            problem.model)
        guide._pyro_name = f"{type(guide).__name__}_{name}"  # own parameters per method
        loss = Trace_ELBO(num_particles=4, vectorize_particles=problem.vectorizable,
                          max_plate_nesting=problem.max_plate_nesting)
        if name != "pyro":
            loss = compile_loss(loss, backend=name)
        pyro.set_rng_seed(seed)
        guide(*problem.args)  # create the parameters from the same seed
        svi = SVI(problem.model, guide, pyro.optim.ClippedAdam({"lr": 0.02}), loss)
        methods[name] = (lambda svi=svi: svi.step(*problem.args), loss)
    return methods


def potential_methods(target: str, backends, seed: int, device, chains: int = 64) -> dict:
    """The batched potential of ``chains`` chains (``value``: as ``RandomWalkMH`` calls it;
    ``grad``: value and gradient, as ``ChEESHMC`` does), ordinary vs compiled
    (``CompiledPotential``; only its eager graph, the ``fx`` backend); for the logistic
    regression also written by hand."""
    from benchmarks import mcmc as mcmc_bench
    from pyro_dgm.inference import ChEESHMC
    from pyro_dgm.inference.chees import _value_and_grad
    from pyro_dgm.inference.compiled_potential import CompiledPotential

    problem = (mcmc_bench.logreg_problem if target == "logreg" else mcmc_bench.fa_problem)(
        str(device))
    kernel = ChEESHMC(problem.model)
    pyro.set_rng_seed(seed)
    kernel.setup_chains(chains, 10, problem.args, problem.kwargs)
    plain = kernel._potential
    z = kernel._flatten(kernel.initial_params)
    unflatten = kernel._unflatten
    fns = {"pyro": plain}
    if "fx" in backends:
        fns["fx"] = CompiledPotential(plain)
    if target == "logreg":
        X, y = problem.args
        scale = mcmc_bench.PRIOR_SCALE

        def hand(params):
            beta = params["beta"]
            logits = beta @ X.T
            loglik = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y.expand_as(logits), reduction="none").sum(-1)
            return 0.5 * (beta / scale).pow(2).sum(-1) - loglik  # up to a constant
        fns["hand"] = hand
    methods = {}
    for name, fn in fns.items():
        def value(fn=fn):
            with torch.no_grad():
                fn(unflatten(z))

        def grad(fn=fn):
            _value_and_grad(fn, unflatten, z)
        loss = fn if isinstance(fn, CompiledPotential) else None
        methods[f"{name}_value"] = (value, loss)
        methods[f"{name}_grad"] = (grad, loss)
    return methods


def time_methods(methods: dict, *, rounds: int, repeat: int, seed: int, device) -> tuple:
    results, ratios, compile_s = {}, {}, {}
    for name, (step, loss) in methods.items():
        start = time.perf_counter()
        step()  # compiled: trace (and compile) here
        sync(device)
        if loss is not None and hasattr(loss, "compile_seconds"):
            compile_s[name] = time.perf_counter() - start
            if getattr(loss, "fallbacks", None) or getattr(loss, "fallback", None):
                raise RuntimeError(f"{name} fell back")
        for _ in range(3):
            step()
    sync(device)
    times = {name: [] for name in methods}
    order = list(methods)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            step = methods[name][0]
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / repeat)
    for name, values in times.items():
        results[f"{name}_ms"] = 1e3 * statistics.median(values)
    for name, seconds in compile_s.items():
        results[f"{name}_compile_s"] = seconds
    for name in methods:
        kind, _, suffix = name.partition("_")
        for peer in ("hand", "pyro"):
            other = f"{peer}_{suffix}" if suffix else peer
            if kind not in (peer, "hand") and other in times:
                ratios[f"{name}_vs_{peer}"] = statistics.median(
                    a / b for a, b in zip(times[name], times[other], strict=True))
    return results, ratios


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backends", default=None,
                   help="comma-separated compile backends (default: fx with --quick, "
                        "else fx,inductor)")
    p.add_argument("--only", default="dlgm,iwae,fa,potential",
                   help="configs: dlgm, iwae, fa, potential")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    backends = (args.backends or ("fx" if args.quick else "fx,inductor")).split(",")
    only = args.only.split(",")
    rounds = args.rounds or (3 if args.quick else 9)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    device = torch.device(args.device)
    configs = []
    if "dlgm" in only:
        configs += [(f"dlgm_k{k}", lambda k=k: dlgm_methods(k, backends, args.seed, device),
                     4 if args.quick else 15) for k in (1, 5)]
    if "iwae" in only:
        configs += [(f"iwae_b{b}_K{K}",
                     lambda b=b, K=K: iwae_methods(b, K, backends, args.seed, device),
                     r) for b, K, r in ((16, 5, 5 if args.quick else 20),
                                        (128, 50, 2 if args.quick else 5))]
    if "fa" in only:
        configs += [(f"fa_{g}", lambda g=g: fa_methods(g, backends, args.seed, device),
                     5 if args.quick else 20) for g in ("autonormal", "mvn")]
    if "potential" in only:
        configs += [(f"potential_{t}",
                     lambda t=t: potential_methods(t, backends, args.seed, device),
                     10 if args.quick else 40) for t in ("logreg", "fa")]
    results, ratios = {}, {}
    with pyro.settings.context(module_local_params=True):
        for name, build, repeat in configs:
            pyro.set_rng_seed(args.seed)
            local = name.startswith(("dlgm", "iwae"))  # SVI: parameters from the store
            with pyro.settings.context(module_local_params=local):
                res, rat = time_methods(build(), rounds=rounds, repeat=repeat, seed=args.seed,
                                        device=device)
            results[name] = res
            ratios.update({f"{name}_{k}": v for k, v in rat.items()})
    settings = {"configs": [c[0] for c in configs], "backends": backends, "rounds": rounds,
                "threads": 1, "pyro_validation": False, "quick": args.quick}
    return emit("compiled", results, ratios, settings=settings, device=args.device,
                out=args.out)


if __name__ == "__main__":
    main()
