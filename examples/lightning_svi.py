"""SVI with any pyro_dgm objective under PyTorch Lightning (optional extra ``lightning``).

The objective's ``differentiable_loss`` module (``objective(model, guide)``) is an ordinary
``nn.Module``, so Lightning trains it like any network, on one device or with
``strategy="ddp"`` across processes and GPUs. The data loader yields **row indices**, which
Lightning's distributed sampler shards by rank; model and guide get them as
``subsample=idx`` for ``pyro.plate("data", N, subsample=idx)``.

Install and run::

    pip install "pyro_dgm[lightning]"
    python examples/lightning_svi.py --epochs 20                 # one process
    python examples/lightning_svi.py --epochs 20 --devices 2 --strategy ddp   # 2 processes
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

from pyro_dgm.distributed import index_plates
from pyro_dgm.inference import IWAE
from pyro_dgm.models.factor_analysis import FactorAnalysis


class SVIModule(pl.LightningModule):
    """Trains ``objective(model, guide)`` on the rows of ``x`` that each batch indexes."""

    def __init__(self, objective, model, guide, x: torch.Tensor, lr: float = 0.01):
        super().__init__()
        self.loss_module = objective(model, guide)
        self.register_buffer("x", x)
        self.lr = lr
        with torch.no_grad():  # lazy guide parameters exist before the strategy wraps us
            self.loss_module(x, subsample=torch.arange(min(2, len(x))))

    def training_step(self, batch, batch_idx):
        (idx,) = batch
        loss = self.loss_module(self.x, subsample=idx)
        self.log("loss", loss / len(self.x), prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.loss_module.parameters(), lr=self.lr)


def build(num_data: int = 500, seed: int = 0, num_particles: int = 1):
    """Factor analysis data, model, AutoNormal guide and the IWAE(K) objective."""
    pyro.settings.set(module_local_params=True)  # before the modules are built
    pyro.set_rng_seed(seed)
    model = FactorAnalysis(6, 2, dtype=torch.float32)
    x = model.simulate(num_data, seed=seed).x
    guide = AutoNormal(model, create_plates=index_plates(num_data))
    objective = IWAE(num_particles=num_particles, max_plate_nesting=1)
    return SVIModule(objective, model, guide, x), x


def main(argv=None) -> tuple[float, float]:
    """Train; returns the ELBO per row (one-sample estimate) before and after."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--num-data", type=int, default=500)
    args = p.parse_args(argv)
    module, x = build(args.num_data)
    with torch.no_grad():
        before = -float(module.loss_module(x)) / len(x)
    loader = DataLoader(TensorDataset(torch.arange(len(x))), batch_size=args.batch_size,
                        shuffle=True)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator,
                         devices=args.devices, strategy=args.strategy, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, loader)
    with torch.no_grad():
        elbo = -float(module.loss_module(x)) / len(x)
    if trainer.is_global_zero:
        print(f"ELBO per row: {before:.3f} before, {elbo:.3f} after {args.epochs} epochs")
    return before, elbo


if __name__ == "__main__":
    main()
