"""``train(..., compile=True)`` / ``pyro-dgm train --compile``: the same metrics and
parameters as the ordinary loop, and an exact resume."""

import pytest
import torch

from pyro_dgm.cli import main
from pyro_dgm.dlgm import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**kw):
    base = dict(latent_dims=[3], hidden_dims=[8], objective="iwae", k=3, epochs=3,
                batch_size=16, max_rows=40, dtype="float64", lr=1e-2, estimator="dreg")
    base.update(kw)
    return TrainConfig(**base)


def _rows(result):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


def _assert_same(a, b):
    for x, y in ((a.model, b.model), (a.guide, b.guide)):
        for key, value in x.state_dict().items():
            assert torch.allclose(value, y.state_dict()[key], atol=1e-10, rtol=0), key


def test_compiled_training_matches_ordinary_and_resumes_exactly(tmp_path):
    ordinary = train(_config(), tmp_path / "a", progress=False)
    compiled = train(_config(), tmp_path / "b", progress=False, compile=True)
    assert ordinary.compile_seconds is None and compiled.compile_seconds > 0
    for r0, r1 in zip(_rows(ordinary), _rows(compiled), strict=True):
        assert r0 == pytest.approx(r1, abs=1e-9)
    _assert_same(ordinary, compiled)
    train(_config(epochs=1), tmp_path / "c", progress=False, compile=True)
    resumed = train(_config(epochs=3), tmp_path / "c", resume=True, progress=False,
                    compile=True)
    assert _rows(resumed) == _rows(compiled)
    for x, y in ((compiled.model, resumed.model), (compiled.guide, resumed.guide)):
        for key, value in x.state_dict().items():
            assert torch.equal(value, y.state_dict()[key]), key


def test_cli_compile_flag(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--latent-dims", "2", "--hidden-dims", "8", "--objective", "elbo",
                 "--epochs", "1", "--max-rows", "30", "--batch-size", "10", "--dtype",
                 "float64", "--out", str(out), "--no-progress", "--compile"])
    text = capsys.readouterr().out
    assert code == 0 and "epoch 1" in text and "compiled step:" in text
