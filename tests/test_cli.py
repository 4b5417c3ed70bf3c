"""Every CLI answers bad input with one `error:` line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv,reason",
    [
        (
            ["training.train_classifier", "--data", "fashion-mnist", "--data-root", "/nonexistent"],
            "dataset-fashion-mnist",
        ),
        (["training.train_classifier", "--data", "/no/such/folder"], "neither 'fashion-mnist'"),
        (["training.train_classifier", "--photo-fraction", "2"], "--photo-fraction"),
        (["training.eval_classifier", "--checkpoint", "/no/such.pt"], "not found"),
        (["training.distort", "--distortion-type", "fog"], "unknown distortion type 'fog'"),
        (["training.distort", "--distortion-type", "gaussian_noise", "--levels", "3"], "not a level"),
        (["training.distort"], "either --distortion-type or --classifier-set"),
        (["training.preview", "--data", "/no/such/folder"], "neither 'fashion-mnist'"),
        (["training.early_exit", "--exit-after", "9", "3", "14"], "3 increasing block indices"),
        (
            ["training.train_backbone", "--data-root", "/nonexistent", "--weights", "none"],
            "dataset-fashion-mnist",
        ),
        (["training.train_backbone", "--epochs", "0"], "--epochs must be positive"),
        (
            ["training.train_expert", "--distortion", "fog", "--backbone", "/no/such.pt"],
            "unknown distortion type 'fog'",
        ),
        (
            ["training.train_expert", "--distortion", "gaussian_blur", "--backbone", "/no/such.pt"],
            "not found",
        ),
        (["training.evaluate", "--backbone", "/no/such.pt"], "not found"),
        (["training.early_exit", "--exit-fractions", "0.25", "0.5", "1.5"], "inside (0, 1)"),
        (["training.early_exit", "--exit-after", "-1", "3", "14"], "3 increasing block indices"),
        (["training.train_classifier", "--val-limit", "0"], "leaves nothing to work on"),
        (["training.train_classifier", "--input-size", "8"], "at least 13"),
        (["training.train_classifier", "--device", "bogus"], "unknown --device"),
        (["training.preview", "--index", "999999"], "past the end"),
        (["export", "--backbone", "/no/such.pt"], "not found"),
        (["export.pipeline", "--exported", "/no/such/folder"], "holds neither an export"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(argv, reason):
    r = _cli(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and reason in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_error_inside_a_dataloader_worker_is_one_line(tmp_path):
    root = tmp_path / "ds"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            (root / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = _cli(
        "training.train_classifier",
        "--data",
        str(root),
        "--photo-fraction",
        "0",
        "--workers",
        "1",
        "--epochs",
        "1",
        "--samples-per-epoch",
        "64",
        "--quiet",
        "--out",
        str(tmp_path / "c.pt"),
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(".png: truncated PNG header")


@pytest.mark.parametrize(
    "module",
    [
        "training.train_classifier",
        "training.eval_classifier",
        "training.distort",
        "training.preview",
        "training.early_exit",
        "training.train_backbone",
        "training.train_expert",
        "training.evaluate",
        "export",
        "export.pipeline",
    ],
)
def test_cli_help(module):
    r = _cli(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "--" in r.stdout
