"""Training loops with checkpoints: :func:`train` for deep latent Gaussian models."""

from pyro_dgm.training.checkpoint import load_checkpoint, save_checkpoint
from pyro_dgm.training.dlgm import TrainConfig, TrainResult, load_trained, train

__all__ = ["TrainConfig", "TrainResult", "load_checkpoint", "load_trained", "save_checkpoint",
           "train"]
