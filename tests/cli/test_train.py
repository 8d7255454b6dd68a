"""``pyro-dgm train`` / ``pyro-dgm evaluate``: a run, its resume and bad input."""

import json
import subprocess
import sys

import pytest

from pyro_dgm.cli import main
from pyro_dgm.dlgm import checkpoint_paths

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_train_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--latent-dims", "2", "--hidden-dims", "8", "--objective", "iwae",
                 "--k", "2", "--epochs", "1", "--max-rows", "30", "--batch-size", "10",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "epoch 1" in capsys.readouterr().out
    code = main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert code == 0 and [p.name for p in checkpoint_paths(out)][-1] == "checkpoint-00002.pt"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "20", "--chunk-size", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 2 and result["num_samples"] == 20
    assert set(result["active_units"]) == {"z1"} and "imputation" in result
    assert result["test_log_likelihood"] >= result["test_elbo"] - 1.0
    for name in ("evaluation.json", "samples.png", "imputation.png", "loss.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("argv,needle", [
    (["train", "--resume", "{tmp}"], "no checkpoint"),
    (["train", "--resume", "{tmp}/missing"], "not a directory"),
    (["train", "--latent-dims", "--out", "{tmp}/x"], "--latent-dims"),
    (["train", "--latent-dims", "0", "--out", "{tmp}/x"], "latent_dims"),
    (["train", "--k", "0", "--out", "{tmp}/x"], "k must be"),
    (["train", "--objective", "renyi", "--out", "{tmp}/x"], "--objective"),
    (["train", "--resume", "{tmp}", "--k", "5"], "only --epochs"),
    (["evaluate", "{tmp}"], "no checkpoint"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_parsers_import_neither_torch_nor_pyro():
    code = ("import argparse, sys\n"
            "import pyro_dgm.cli.evaluate as e, pyro_dgm.cli.train as t\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "t.add_parser(sub); e.add_parser(sub)\n"
            "print(sorted({'torch', 'pyro', 'pyro_dgm._validation'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- issue 16: one error style, nothing created before the arguments are valid ----------
SMALL = ["--latent-dims", "2", "--hidden-dims", "8", "--max-rows", "30", "--batch-size", "10",
         "--no-progress"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--seed", "-1", "--out", "{tmp}/new"], "--seed: must be >= 0, got -1"),
    (["train", "--threads", "0", "--out", "{tmp}/new"], "--threads: must be >= 1"),
    (["train", "--k", "0", "--out", "{tmp}/new"], "--k: k must be >= 1, got 0"),
    (["train", "--lr", "-1", "--out", "{tmp}/new"], "--lr: lr"),
    (["train", "--out", "{tmp}/file"], "--out: '{tmp}/file' is an existing file"),
    (["train", "--out", "{tmp}/file/new"], "--out: cannot create"),
    (["train", "--out", "/proc/pyro-dgm-run"], "--out: cannot write to '/proc'"),
    (["train", "--device", "cdua", "--out", "{tmp}/new"], "--device: unknown device 'cdua'"),
    (["train", "--distributed", "--timeout", "0", "--out", "{tmp}/new"], "--timeout: must be"),
    (["train", "--checkpoint", "checkpoint-00001.pt", "--out", "{tmp}/new"],
     "--checkpoint: only with --resume"),
    (["evaluate", "{tmp}/new", "--seed", "-1"], "--seed: must be >= 0, got -1"),
    (["evaluate", "{tmp}/new", "--num-samples", "0"], "--num-samples: must be >= 1"),
    (["evaluate", "{tmp}/new"], "directory: '{tmp}/new' is not a directory"),
    (["evaluate", "{tmp}/file"], "directory: '{tmp}/file' is not a directory"),
    (["evaluate", "{tmp}", "--device", "mps"], "--device: 'mps' but MPS is not available"),
])
def test_train_and_evaluate_errors_name_the_argument(tmp_path, capsys, argv, needle):
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert needle.replace("{tmp}", str(tmp_path)) in err, err
    assert "resume:" not in err
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only machine")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, command):
    argv = (["train", "--out", str(tmp_path / "new")] if command == "train"
            else ["evaluate", str(tmp_path)]) + ["--device", "cuda"]
    assert main(argv) == 2
    assert "--device: 'cuda' but CUDA is not available" in _one_line(capsys)
    assert not (tmp_path / "new").exists()


def test_out_holding_another_run_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--seed", "3", "--out", str(out), *SMALL]) == 2
    err = _one_line(capsys)
    assert err.endswith("pass --overwrite (overwrite=True) to replace it") and "--out: " in err
    assert [p.name for p in checkpoint_paths(out)][-1] == "checkpoint-00002.pt"
    assert main(["train", "--epochs", "1", "--seed", "3", "--out", str(out), "--overwrite",
                 *SMALL]) == 0
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-00001.pt"]
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    assert main(["train", "--resume", str(out), "--overwrite", "--epochs", "2"]) == 2
    assert "--overwrite: a resumed run continues its directory" in _one_line(capsys)


def test_damaged_checkpoint_offers_resume_from_the_intact_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    checkpoint_paths(out)[-1].write_bytes(b"")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 2
    err = _one_line(capsys)
    assert err.startswith("pyro-dgm") and "--resume: checkpoint" in err and "0 bytes" in err
    assert f"pyro-dgm train --resume {out} --checkpoint checkpoint-00001.pt" in err
    assert main(["evaluate", str(out), "--num-samples", "5"]) == 2
    assert "directory: checkpoint" in _one_line(capsys)
    assert main(["train", "--resume", str(out), "--checkpoint", "checkpoint-00001.pt",
                 "--epochs", "3"]) == 0
    assert [p.name for p in checkpoint_paths(out)] == ["checkpoint-00002.pt",
                                                       "checkpoint-00003.pt"]


def test_divergent_training_is_the_projects_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--lr", "10", "--epochs", "5", "--out", str(out), *SMALL]) == 2
    err = _one_line(capsys)
    assert "loss is not finite at epoch " in err and "lower the learning rate" in err
    assert "tensor(" not in err and "Expected parameter" not in err


def test_threads_are_set_deliberately_by_train_evaluate_and_every_benchmark():
    """Issue 16, case 11: train/evaluate keep --threads (default 1); every benchmark that
    runs torch itself sets one thread by default (its JSON records torch_threads)."""
    import argparse
    import pathlib

    import pyro_dgm.cli.evaluate as e
    import pyro_dgm.cli.train as t

    sub = argparse.ArgumentParser().add_subparsers()
    t.add_parser(sub)
    e.add_parser(sub)
    for name, parser in sub.choices.items():
        extra = ["--out", "x"] if name == "train" else ["x"]
        assert parser.parse_args(extra).threads == 1, name
    root = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
    for path in sorted(root.glob("*.py")):
        text = path.read_text()
        if "def main" not in text or "subprocess" in text:  # children set their own
            continue
        assert "set_num_threads(1)" in text or (
            'add_argument("--threads", type=int, default=1' in text
            and "set_num_threads(args.threads)" in text), path.name
    # the distributed benchmark runs `pyro-dgm train` (--threads 1) with OMP_NUM_THREADS=1
    text = (root / "distributed_svi.py").read_text()
    assert '"threads_per_process": 1' in text and 'env["OMP_NUM_THREADS"] = "1"' in text
