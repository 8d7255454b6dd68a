"""Issue 16: run directories are owned; checkpoint errors say what happened; divergence."""

import json
import shutil

import pytest
import torch

from pyro_dgm.dlgm import (
    TrainConfig,
    checkpoint_paths,
    evaluate_run,
    load_checkpoint,
    load_trained,
    resume_point,
    train,
)
from pyro_dgm.dlgm.rundir import RunDirectoryError, config_hash

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**kw):
    base = dict(latent_dims=[2], hidden_dims=[8], objective="elbo", k=1, epochs=3,
                batch_size=16, max_rows=40, dtype="float64", lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def test_second_run_into_a_used_directory_is_refused_unless_overwrite(tmp_path):
    """Case 1: the old run's higher-numbered checkpoints no longer win silently."""
    train(_config(epochs=3), tmp_path, progress=False)
    old_run = json.loads((tmp_path / "config.json").read_text())["run_id"]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"holds the checkpoints of run .*--overwrite"):
        train(_config(epochs=1, latent_dims=[3]), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing touched
    (tmp_path / "notes.txt").write_text("mine")
    new = train(_config(epochs=1, latent_dims=[3]), tmp_path, progress=False, overwrite=True)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["checkpoint-00001.pt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only run files are cleared
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["run_id"] != old_run and stored["latent_dims"] == [3]
    assert stored["config_hash"] == config_hash(_config(latent_dims=[3]).validate())
    config, state = resume_point(tmp_path, map_location="cpu")
    assert config.latent_dims == [3] and state["run"]["run_id"] == stored["run_id"]
    model, _, _, _ = load_trained(tmp_path)
    for key, value in new.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_resume_and_evaluate_use_only_this_runs_checkpoints(tmp_path):
    """A leftover checkpoint of another run (an old directory) is skipped or refused."""
    train(_config(epochs=3), tmp_path / "old", progress=False)
    train(_config(epochs=1, latent_dims=[3]), tmp_path / "new", progress=False)
    shutil.copy(checkpoint_paths(tmp_path / "old")[-1], tmp_path / "new")  # epoch 3, foreign
    config, state = resume_point(tmp_path / "new", map_location="cpu")
    assert state["epoch"] == 1 and config.latent_dims == [3]
    config.epochs = 2
    result = train(config, tmp_path / "new", resume=state, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    # a config.json that describes another run than the checkpoints: evaluate refuses
    (tmp_path / "old" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "new" / "config.json").read_text())}))
    with pytest.raises(ValueError, match="belongs to run .* describes run"):
        evaluate_run(tmp_path / "old", num_samples=5)
    legacy = json.loads((tmp_path / "old" / "config.json").read_text())
    del legacy["run_id"], legacy["config_hash"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"does not match config.json .*latent_dims"):
        evaluate_run(tmp_path / "old", num_samples=5)


@pytest.mark.parametrize("damage", ["empty", "truncate"])
def test_damaged_checkpoint_names_the_intact_one_and_deletes_nothing(tmp_path, damage):
    """Case 2: no advice to delete; 0 bytes gives the message, not an IndexError."""
    straight = train(_config(epochs=2), tmp_path / "a", progress=False)
    out = tmp_path / "b"
    train(_config(epochs=2), out, progress=False)
    first, newest = checkpoint_paths(out)
    data = newest.read_bytes()
    newest.write_bytes(b"" if damage == "empty" else data[: len(data) // 3])
    with pytest.raises(ValueError) as info:
        load_checkpoint(out)
    message = str(info.value)
    assert ("is empty (0 bytes)" if damage == "empty" else "truncated or corrupted") in message
    assert "checkpoint-00001.pt is intact" in message and "--checkpoint checkpoint-00001.pt" \
        in message and "delete" not in message.replace("nothing was deleted", "")
    assert first.exists() and newest.exists()
    config, state = resume_point(out, map_location="cpu", checkpoint="checkpoint-00001.pt")
    assert state["epoch"] == 1
    config.epochs = 2
    resumed = train(config, out, resume=state, progress=False)
    for key, value in straight.model.state_dict().items():  # still bit-identical
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert load_checkpoint(out)["epoch"] == 2  # the damaged file was replaced atomically
    first.write_bytes(b"")
    (out / "checkpoint-00002.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no earlier intact checkpoint"):
        load_checkpoint(out)


def test_a_load_failing_for_another_reason_says_so(tmp_path, monkeypatch):
    train(_config(epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="intact but could not be loaded with "
                       "map_location='cdua'") as info:
        load_checkpoint(tmp_path, map_location="cdua")
    assert "delete" not in str(info.value) and "corrupted" not in str(info.value)

    def cuda_only(*args, **kwargs):
        raise RuntimeError("Attempting to deserialize object on a CUDA device but "
                           "torch.cuda.is_available() is False.")

    monkeypatch.setattr(torch, "load", cuda_only)
    with pytest.raises(RunDirectoryError, match="holds CUDA tensors; load it with --device "
                       "cpu") as info:
        load_checkpoint(tmp_path)
    assert "delete" not in str(info.value)
    with pytest.raises(ValueError, match="no checkpoint 'checkpoint-00007.pt'.*there: "
                       "checkpoint-00001.pt"):
        load_checkpoint(tmp_path, checkpoint="checkpoint-00007.pt")


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    """Case 6: the project's message, not Pyro's tensor dump."""
    with pytest.raises(ValueError) as info:
        train(_config(epochs=3, lr=1e6), tmp_path, progress=False)
    message = str(info.value)
    assert message.startswith("loss is not finite at epoch ") and " step " in message
    assert "lower the learning rate (lr=1e+06)" in message
    assert "tensor(" not in message and "\n" not in message
