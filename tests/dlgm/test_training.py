"""DLGM training: exact resume, atomic checkpoints, damaged checkpoints."""

import json

import pytest
import torch

from pyro_dgm.dlgm import TrainConfig, checkpoint_paths, load_checkpoint, train

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
