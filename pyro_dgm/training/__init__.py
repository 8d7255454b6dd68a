"""Training loops with checkpoints (old import path of :mod:`pyro_dgm.dlgm`).

Deprecated: kept for old imports; will be removed — import from pyro_dgm.dlgm.
"""

from pyro_dgm.dlgm import (
    TrainConfig,
    TrainResult,
    load_checkpoint,
    load_trained,
    save_checkpoint,
    train,
)

__all__ = ["TrainConfig", "TrainResult", "load_checkpoint", "load_trained", "save_checkpoint",
           "train"]
