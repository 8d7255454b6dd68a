"""Smoke test of examples/lightning_svi.py (skipped when ``lightning`` is not installed)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("lightning")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_svi.py"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lightning_example_trains():
    spec = importlib.util.spec_from_file_location("lightning_svi", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    before, after = example.main(["--epochs", "3", "--batch-size", "50", "--num-data", "200"])
    assert math.isfinite(after)
    assert after > before  # the ELBO per row went up
