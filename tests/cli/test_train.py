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
