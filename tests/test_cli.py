"""Every CLI answers bad input with one `error:` line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv,reason", [
    (["training.train_classifier", "--data", "fashion-mnist", "--data-root", "/nonexistent"],
     "dataset-fashion-mnist"),
    (["training.train_classifier", "--data", "/no/such/folder"], "neither 'fashion-mnist'"),
    (["training.train_classifier", "--photo-fraction", "2"], "--photo-fraction"),
    (["training.eval_classifier", "--checkpoint", "/no/such.pt"], "not found"),
    (["training.distort", "--distortion-type", "fog"], "unknown distortion type 'fog'"),
    (["training.distort", "--distortion-type", "gaussian_noise", "--levels", "3"], "not a level"),
    (["training.distort"], "either --distortion-type or --classifier-set"),
    (["training.preview", "--data", "/no/such/folder"], "neither 'fashion-mnist'"),
    (["training.early_exit", "--exit-after", "9", "3", "14"], "3 increasing block indices"),
    (["training.train_backbone", "--data-root", "/nonexistent", "--weights", "none"],
     "dataset-fashion-mnist"),
    (["training.train_backbone", "--epochs", "0"], "--epochs must be positive"),
    (["training.train_expert", "--distortion", "fog", "--backbone", "/no/such.pt"],
     "unknown distortion type 'fog'"),
    (["training.train_expert", "--distortion", "gaussian_blur", "--backbone", "/no/such.pt"],
     "not found"),
    (["training.evaluate", "--backbone", "/no/such.pt"], "not found"),
])
def test_cli_bad_input_is_one_line_and_nonzero(argv, reason):
    r = _cli(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and reason in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("module", ["training.train_classifier", "training.eval_classifier",
                                    "training.distort", "training.preview", "training.early_exit",
                                    "training.train_backbone", "training.train_expert",
                                    "training.evaluate"])
def test_cli_help(module):
    r = _cli(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "--" in r.stdout
