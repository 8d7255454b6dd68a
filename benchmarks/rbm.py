"""RBM training by CD-k and PCD, compared by exact log-likelihood on binarized digits.

The RBM has 64 visible units (8×8 digits, binarized at intensity >= 8) and few enough
hidden units that log Z is exact (enumerating the 2**n_hidden hidden states), so the
figures are exact average log-likelihoods in nats per image, not AIS estimates. Every
method gets the same number of parameter updates from the same start (visible biases at the
data's pixel log-odds, the best independent-pixel model; small random weights), and the
same SGD settings. Salakhutdinov & Murray (2008) found on MNIST (500 hidden units, AIS):
CD1 ≈ −125.5 < CD3 ≈ −105.5 < CD25 ≈ −86.3 nats; this checks the ordering at our scale.

    python -m benchmarks.rbm            # 16 hidden units, 200 epochs (a few minutes)
    python -m benchmarks.rbm --quick    # 12 hidden units, 30 epochs (under a minute)
"""

from __future__ import annotations

import time

import torch

from benchmarks._common import emit, parser, sync
from pyro_dgm.data import load_digits
from pyro_dgm.models import RBM

METHODS = (("cd", 1), ("cd", 3), ("cd", 10), ("pcd", 1))


def exact_log_likelihood(rbm: RBM, *datasets: torch.Tensor) -> list[float]:
    """Mean exact log p(v) (nats per image) of each data set."""
    with torch.no_grad():
        log_z = rbm.log_partition()
        return [float(rbm.log_prob(x, log_z=log_z).mean()) for x in datasets]


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=None, help="hidden units (<= 20)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = args.hidden or (12 if args.quick else 16)
    epochs = args.epochs or (30 if args.quick else 200)
    device = torch.device(args.device)
    train = load_digits(split="train", device=device)
    test = load_digits(split="test", device=device)

    results = {}
    for method, k in METHODS:
        name = f"{method}{k}"
        g = torch.Generator(device=device).manual_seed(args.seed)
        rbm = RBM(64, hidden, generator=g, device=device).init_visible_bias(train)
        before = exact_log_likelihood(rbm, train, test)
        sync(device)
        start = time.perf_counter()
        rbm.fit(train, method=method, k=k, epochs=epochs, batch_size=args.batch_size,
                lr=args.lr, momentum=args.momentum, generator=g, progress=False)
        sync(device)
        seconds = time.perf_counter() - start
        after = exact_log_likelihood(rbm, train, test)
        results[name] = {
            "train_log_lik_before": before[0], "test_log_lik_before": before[1],
            "train_log_lik": after[0], "test_log_lik": after[1],
            "test_gain": after[1] - before[1], "train_seconds": seconds,
        }
    base = results["cd1"]["test_gain"]
    ratios = {f"test_gain_{name}_vs_cd1": r["test_gain"] / base
              for name, r in results.items() if name != "cd1"}
    settings = {"n_visible": 64, "n_hidden": hidden, "epochs": epochs,
                "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
                "optimizer": "SGD", "train_rows": len(train), "test_rows": len(test),
                "binarize": "fixed (>= 8)", "seed": args.seed, "quick": args.quick,
                "threads": args.threads}
    return emit("rbm", results, ratios, settings=settings, device=args.device, out=args.out)


if __name__ == "__main__":
    main()
