"""Bayes by Backprop: digits classification, Blundell's toy regression, layer timings.

Three parts, one JSON object (``python -m benchmarks.bbb --quick``):

1. ``digits``: scikit-learn's 8x8 digits (1,347 train / 450 test, stratified), an MLP
   64-100-100-10 (ReLU, Adam 1e-3, 200 epochs, 60 with ``--quick``, batch 64) trained as a
   deterministic network and with Bayes by Backprop (local reparameterization, loss mean
   NLL + pi_i KL with Blundell's minibatch weights pi_i, ``--kl-schedule``) under a
   Gaussian prior N(0, 1), Blundell's scale-mixture prior (pi = 1/2, sigma1 = 1,
   sigma2 = e^-6) from scratch, and the same scale-mixture BbB started from the trained
   deterministic weights (MOPED, 10 more epochs); test error, NLL and expected calibration
   error (15 bins) of the predictive mean (50 weight samples), averaged over seeds.
2. ``toy``: Blundell's 1-D regression (x in [0, 0.5]), a 1-100-100-1 BbB network with a
   learned noise sd; the predictive band over [-0.2, 1.2] goes to
   ``docs/img/bbb_toy_regression.png``.
3. ``timing``: forward + KL + backward of a 512 -> 512 layer at batch 128, per estimator,
   against bayesian-torch's ``LinearReparameterization`` / ``LinearFlipout`` (optional;
   ``pip install --no-deps bayesian-torch``: its wheel pins torchvision/tensorboard and a
   plain install replaces torch) and ``nn.Linear``. Ours and theirs alternate round by
   round and the ratio is the median of per-round ratios, which is robust to a busy host.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from benchmarks._common import emit, parser, sync
from pyro_dgm.data import blundell_toy_data, toy_function
from pyro_dgm.nn import (
    BayesLinear,
    bayes_layers,
    bayesianize,
    bbb_loss,
    blundell_kl_weight,
    kl_divergence,
    make_prior,
    predict,
)

PLOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "bbb_toy_regression.png"


# ---- digits --------------------------------------------------------------------------
def _digits(seed, device):
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=450,
                                          stratify=d.target, random_state=seed)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), \
        t(yte, torch.long)


def _mlp(hidden, kind, estimator, init_sigma=1e-3, mixture=None):
    if kind == "deterministic":
        layer = lambda i, o: nn.Linear(i, o)  # noqa: E731
    else:
        prior = (make_prior("gaussian") if kind == "bbb_gaussian"
                 else make_prior("scale_mixture", **(mixture or {})))
        layer = lambda i, o: BayesLinear(  # noqa: E731
            i, o, prior=copy.deepcopy(prior), estimator=estimator, init_sigma=init_sigma)
    return nn.Sequential(layer(64, hidden), nn.ReLU(), layer(hidden, hidden), nn.ReLU(),
                         layer(hidden, 10))


def ece(probs, y, bins=15):
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    conf, pred = probs.max(-1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    total = probs.new_zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if bool(inside.any()):
            total = total + inside.float().mean() * (conf[inside].mean()
                                                     - correct[inside].mean()).abs()
    return float(total)


def run_digits(seed, hidden, epochs, device, estimator="local", samples=50, lr=1e-3,
               bbb_lr=1e-3, init_sigma=1e-3, mixture=None,
               kinds=("deterministic", "bbb_gaussian", "bbb_scale_mixture"), moped_epochs=10,
               kl_schedule="uniform"):
    xtr, ytr, xte, yte = _digits(seed, device)
    out = {}
    trained = None
    for kind in kinds:
        torch.manual_seed(seed)
        if kind == "bbb_scale_mixture_moped":  # MOPED: start at the deterministic weights
            net = bayesianize(trained, prior="scale_mixture", estimator=estimator,
                              prior_kwargs=mixture or {}, init_from_weights=True)
        else:
            net = _mlp(hidden, kind, estimator, init_sigma, mixture).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr if kind == "deterministic" else bbb_lr)
        n = len(ytr)
        num_epochs = epochs if kind != "bbb_scale_mixture_moped" else moped_epochs
        for _ in range(num_epochs):
            batches = torch.randperm(n, device=device).split(64)
            for i, idx in enumerate(batches):
                nll = F.cross_entropy(net(xtr[idx]), ytr[idx], reduction="none")
                weight = (blundell_kl_weight(i, len(batches)) if kl_schedule == "blundell"
                          else None)
                loss = (nll.mean() if kind == "deterministic"
                        else bbb_loss(nll, kl_divergence(net), num_data=n, kl_weight=weight))
                opt.zero_grad()
                loss.backward()
                opt.step()
        if kind == "deterministic":
            trained = copy.deepcopy(net)
            with torch.no_grad():
                probs = F.softmax(net.eval()(xte), -1)
        else:
            probs = predict(net, xte, num_samples=samples).probs
        out[kind] = {
            "test_error": float((probs.argmax(-1) != yte).float().mean()),
            "nll": float(-probs.clamp_min(1e-12).log().gather(1, yte[:, None]).mean()),
            "ece": ece(probs, yte),
        }
    return out


# ---- toy regression ------------------------------------------------------------------
def run_toy(steps, device, plot=True, lr=1e-2, init_sigma=0.02):
    torch.manual_seed(0)
    x, y = blundell_toy_data(200, seed=0, dtype=torch.float32, device=device)
    y = y[:, None]
    kw = dict(estimator="local", init_sigma=init_sigma)
    net = nn.Sequential(BayesLinear(1, 100, **kw), nn.ReLU(), BayesLinear(100, 100, **kw),
                        nn.ReLU(), BayesLinear(100, 1, **kw)).to(device)
    log_noise = torch.tensor(math.log(0.1), device=device, requires_grad=True)
    opt = torch.optim.Adam([*net.parameters(), log_noise], lr=lr)
    for _ in range(steps):
        nll = -torch.distributions.Normal(net(x), log_noise.exp()).log_prob(y).squeeze(-1)
        loss = bbb_loss(nll, kl_divergence(net), num_data=len(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    grid = torch.linspace(-0.2, 1.2, 300, device=device)[:, None]
    for layer in bayes_layers(net):  # same marginals; each draw is now one whole function
        layer.estimator = "reparam"
    noise = float(log_noise.detach().exp())
    pred = predict(net, grid, num_samples=500, likelihood="gaussian", noise_scale=noise)
    sd = pred.variance.sqrt().squeeze(-1)
    inside = (grid.squeeze(-1) >= 0) & (grid.squeeze(-1) <= 0.5)
    truth = toy_function(grid).squeeze(-1)
    result = {"noise_sd": noise,
              "band_sd_inside": float(sd[inside].mean()),
              "band_sd_outside": float(sd[~inside].mean()),
              "rmse_inside": float((pred.mean.squeeze(-1) - truth)[inside].pow(2).mean()
                                   .sqrt())}
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        g, m = grid.squeeze(-1).cpu(), pred.mean.squeeze(-1).cpu()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k, alpha in [(2, 0.2), (1, 0.35)]:
            ax.fill_between(g, m - k * sd.cpu(), m + k * sd.cpu(), color="C0", alpha=alpha,
                            lw=0, label=f"±{k} sd (epistemic + noise)")
        ax.plot(g, m, color="C0", label="BbB predictive mean")
        ax.plot(g, truth.cpu(), "k--", lw=1, label="noise-free curve")
        ax.scatter(x.cpu(), y.cpu(), s=6, color="k", label="training data")
        ax.set_ylim(-1.5, 2.5)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title("Bayes by Backprop, Blundell et al. toy regression")
        PLOT.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(PLOT, dpi=110, bbox_inches="tight")
        plt.close(fig)
        result["plot"] = str(PLOT.relative_to(PLOT.parent.parent.parent))
    return result


# ---- timing --------------------------------------------------------------------------
def _step_fn(layer, x, kind):
    def step():
        layer.zero_grad(set_to_none=True)
        if kind == "ours":
            loss = layer(x).sum() + layer.kl_divergence()
        elif kind == "theirs":
            out, kl = layer(x)
            loss = out.sum() + kl
        else:
            loss = layer(x).sum()
        loss.backward()
    return step


def _time(fn, repeat, device):
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def run_timing(batch, width, repeat, rounds, device):
    try:
        from bayesian_torch.layers import LinearFlipout, LinearReparameterization
    except ImportError:
        LinearFlipout = LinearReparameterization = None
    x = torch.randn(batch, width, device=device)
    fns = {"nn_linear": _step_fn(nn.Linear(width, width).to(device), x, "plain")}
    for est in ("reparam", "local", "flipout"):
        fns[f"ours_{est}"] = _step_fn(BayesLinear(width, width, estimator=est).to(device), x,
                                      "ours")
    if LinearReparameterization is not None:
        fns["bayesian_torch_reparam"] = _step_fn(
            LinearReparameterization(width, width).to(device), x, "theirs")
        fns["bayesian_torch_flipout"] = _step_fn(LinearFlipout(width, width).to(device), x,
                                                 "theirs")
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    per_round = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per_round[k].append(_time(fn, repeat, device))
    results = {k: statistics.median(v) * 1e3 for k, v in per_round.items()}
    ratios = {}
    for est in ("reparam", "local", "flipout"):
        ours = per_round[f"ours_{est}"]
        ratios[f"{est}_vs_nn_linear"] = statistics.median(
            a / b for a, b in zip(ours, per_round["nn_linear"], strict=True))
        if f"bayesian_torch_{est}" in per_round:
            ratios[f"{est}_vs_bayesian_torch"] = statistics.median(
                a / b for a, b in zip(ours, per_round[f"bayesian_torch_{est}"], strict=True))
    return {f"{k}_ms": v for k, v in results.items()}, ratios, \
        LinearReparameterization is not None


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--parts", default="digits,toy,timing")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seeds", default=None, help="digits seeds, e.g. 0,1,2 (default: 0 for "
                   "--quick, else 0,1,2); each seed is also a different train/test split")
    p.add_argument("--epochs", type=int, default=None,
                   help="digits epochs, every network (default: 60 for --quick, else 200)")
    p.add_argument("--kl-schedule", choices=("uniform", "blundell"), default="blundell",
                   help="BbB KL weight per minibatch: 1/M, or Blundell's 2^(M-i)/(2^M-1) "
                   "(default)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    quick = args.quick
    settings = {"threads": args.threads, "quick": quick,
                "digits": {"hidden": 100, "epochs": args.epochs or (60 if quick else 200),
                           "moped_epochs": 10,
                           "lr": 1e-3, "kl_schedule": args.kl_schedule,
                           "seeds": ([int(v) for v in args.seeds.split(",")] if args.seeds
                                     else [0] if quick else [0, 1, 2]),
                           "estimator": "local",
                           "scale_mixture": {"pi": 0.5, "sigma1": 1.0,
                                             "sigma2": "exp(-6)"}},
                "toy": {"steps": 1500 if quick else 5000, "n": 200, "lr": 1e-2,
                        "init_sigma": 0.02, "estimator": "local (reparam to predict)"},
                "timing": {"batch": 128, "width": 512, "repeat": 10 if quick else 30,
                           "rounds": 5 if quick else 15}}
    results, ratios = {}, {}
    if "digits" in parts:
        s = settings["digits"]
        kinds = ("deterministic", "bbb_gaussian", "bbb_scale_mixture",
                 "bbb_scale_mixture_moped")
        runs = [run_digits(seed, s["hidden"], s["epochs"], args.device, kinds=kinds,
                           moped_epochs=s["moped_epochs"], kl_schedule=s["kl_schedule"])
                for seed in s["seeds"]]
        avg = {k: {m: statistics.mean(r[k][m] for r in runs) for m in runs[0][k]}
               for k in runs[0]}
        results["digits"] = {"mean": avg, "per_seed": runs}
        det = avg["deterministic"]
        for kind in ("bbb_scale_mixture", "bbb_scale_mixture_moped"):
            for m in ("test_error", "nll", "ece"):
                ratios[f"digits_{m}_{kind[4:]}_vs_deterministic"] = (avg[kind][m]
                                                                     / max(det[m], 1e-12))
    if "toy" in parts:
        results["toy"] = run_toy(settings["toy"]["steps"], args.device, not args.no_plot)
    if "timing" in parts:
        s = settings["timing"]
        timing, timing_ratios, have_bt = run_timing(s["batch"], s["width"], s["repeat"],
                                                    s["rounds"], args.device)
        results["timing"] = timing
        results["timing"]["bayesian_torch_available"] = have_bt
        ratios.update(timing_ratios)
    emit("bbb", results, ratios, settings=settings, device=args.device, out=args.out)


if __name__ == "__main__":
    main()
