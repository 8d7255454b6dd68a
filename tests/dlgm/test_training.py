"""DLGM training: exact resume, atomic checkpoints, damaged checkpoints."""

import json

import pytest
import torch

from pyro_dgm.dlgm import (
    LocalStrategy,
    Strategy,
    TrainConfig,
    checkpoint_paths,
    load_checkpoint,
    resume_point,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**kw):
    base = dict(latent_dims=[3], hidden_dims=[8], objective="iwae", k=3, epochs=4,
                batch_size=16, max_rows=40, dtype="float64", lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("guide,latent", [("gaussian", [3, 2]), ("iaf", [3])])
def test_resume_gives_identical_parameters(tmp_path, guide, latent):
    straight = train(_config(guide=guide, latent_dims=latent), tmp_path / "a", progress=False)
    train(_config(guide=guide, latent_dims=latent, epochs=2), tmp_path / "b", progress=False)
    resumed = train(_config(epochs=4), tmp_path / "b", resume=True, progress=False)
    for a, b in ((straight.model, resumed.model), (straight.guide, resumed.guide)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == torch.float64
            assert torch.equal(sa[key], sb[key]), key
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    # only the last two checkpoints are kept; metrics and the plot are there
    assert [p.name for p in checkpoint_paths(tmp_path / "b")] == [
        "checkpoint-00003.pt", "checkpoint-00004.pt"]
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("epoch,train_loss,test_elbo")
    assert len(json.loads((tmp_path / "b" / "metrics.json").read_text())) == 4
    assert (tmp_path / "b" / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_is_a_clear_error_and_previous_survives(tmp_path, damage):
    train(_config(epochs=2, objective="elbo", k=1), tmp_path, progress=False)
    first, newest = checkpoint_paths(tmp_path)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)
    with pytest.raises(ValueError, match="truncated or corrupted.*checkpoint-00001.pt is intact"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        train(_config(epochs=3), tmp_path, resume=True, progress=False)
    assert first.exists()
    newest.unlink()  # the previous checkpoint loads and resumes
    assert load_checkpoint(tmp_path)["epoch"] == 1
    result = train(_config(epochs=2), tmp_path, resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_checkpoint_loads_weights_only(tmp_path):
    train(_config(epochs=1, objective="elbo", k=1), tmp_path, progress=False)
    state = torch.load(checkpoint_paths(tmp_path)[-1], weights_only=True)
    assert state["epoch"] == 1 and set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["optimizer"]["state"]  # Adam moments are stored


def test_resume_point_state_continues_like_resume_true(tmp_path):
    straight = train(_config(epochs=3), tmp_path / "a", progress=False)
    train(_config(epochs=1), tmp_path / "b", progress=False)
    config, state = resume_point(tmp_path / "b", map_location="cpu")
    assert config == _config(epochs=1).validate() and state["epoch"] == 1
    config.epochs = 3
    resumed = train(config, tmp_path / "b", resume=state, progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.is_main and [h["epoch"] for h in resumed.history] == [1, 2, 3]


class _Recording(LocalStrategy):
    """A single process that claims not to be the main one and records the loop's calls."""

    is_main = False

    def __init__(self):
        super().__init__()
        self.calls = []

    def start(self, *, device, batch_size, num_data):
        self.calls.append(("start", device, batch_size, num_data))
        return super().start(device=device, batch_size=batch_size, num_data=num_data)

    def wrap(self, loss_module):
        self.calls.append("wrap")
        return loss_module

    def reduce(self, value):
        self.calls.append("reduce")
        return value

    def close(self):
        self.calls.append("close")


def test_strategy_is_asked_and_only_the_main_process_writes(tmp_path):
    strategy = _Recording()
    result = train(_config(epochs=2), tmp_path / "r", progress=False, strategy=strategy)
    assert strategy.calls == [("start", "cpu", 16, 40), "wrap", "reduce", "reduce", "close"]
    assert result.is_main is False and len(result.history) == 2
    assert not (tmp_path / "r").exists()
    strategy = _Recording()
    with pytest.raises(ValueError, match="no checkpoint"):
        train(_config(), tmp_path, resume=True, strategy=strategy)
    assert strategy.calls == ["close"]


def test_local_strategy_batches_a_permutation():
    strategy = LocalStrategy()
    assert strategy.start(device="cpu", batch_size=4, num_data=10) == "cpu"
    batches = strategy.index_batches(0, 10, torch.Generator().manual_seed(3))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.randperm(10, generator=torch.Generator()
                                                           .manual_seed(3)))
    with pytest.raises(TypeError):
        Strategy()  # abstract: index_batches, wrap and reduce must be given
