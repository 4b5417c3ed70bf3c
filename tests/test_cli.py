"""Every CLI answers bad input with one `error:` line and exit status 2, never a traceback.

The commands run in process (`run_cli` with the module's own parser and main, as its `__main__`
block does): importing torch once instead of once per case. A few cases run as real processes,
where the process is the point: the `python -m` wiring, and an error raised in a DataLoader worker.
"""

import importlib
import importlib.util
import subprocess
import sys

import pytest

from core.cli import run_cli

MODULES = [
    "training.train_classifier",
    "training.eval_classifier",
    "training.distort",
    "training.preview",
    "training.early_exit",
    "training.train_backbone",
    "training.train_expert",
    "training.evaluate",
    "training.spectrum_probe",
    "training.route_bias",
    "benchmarks.spectrum_cost",
    "export",
    "export.pipeline",
    "edge_router.devices",
    "edge_router.pki",
    "benchmarks.offload_tls",
]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def _in_process(module: str, argv: list[str]) -> int:
    """The exit status `python -m module argv` would have, run in this process."""
    mod = importlib.import_module(module if module != "export" else "export.__main__")
    try:
        return mod._run(argv) if module == "export" else run_cli(mod.main, mod.get_args_parser, argv)
    except SystemExit as exc:  # argparse: --help, or a usage error
        return exc.code


@pytest.mark.parametrize(
    "argv,reason",
    [
        (
            ["training.train_classifier", "--data", "fashion-mnist", "--data-root", "/nonexistent"],
            "dataset-fashion-mnist",
        ),
        (["training.train_classifier", "--data", "/no/such/folder"], "neither 'fashion-mnist'"),
        (["training.train_classifier", "--photo-fraction", "2"], "--photo-fraction"),
        (["training.train_classifier", "--spectra", "luma,hue"], "--spectra: spectra must be"),
        (["training.train_classifier", "--jpeg-quality", "90-60"], "--jpeg-quality: expected a range"),
        (["training.train_classifier", "--jpeg-444-fraction", "-1"], "--jpeg-444-fraction must be"),
        (["training.train_classifier", "--bottleneck", "0"], "--bottleneck must be positive"),
        (
            ["training.train_classifier", "--samples-per-epoch", "32", "--batch-size", "64"],
            "an epoch would train on nothing",
        ),
        (["training.train_classifier", "--lossless-only", "gaussian_noise:7"], "7 is not a level"),
        (["training.route_bias", "--checkpoint", "/no/such.pt", "--out", "x.pt"], "not found"),
        (["training.route_bias", "--checkpoint", "x.pt", "--out", "y.pt", "--grid", "1:0:1"], "--grid"),
        (["training.eval_classifier", "--wires", "png", "webp"], "--wires: unknown image wire 'webp'"),
        (["training.eval_classifier", "--frame-wires", "jpeg:90", "jpeg:90"], "a wire is named twice"),
        (["training.evaluate", "--wires", "jpeg:101"], "--wires: unknown image wire"),
        (["benchmarks.stream", "--wires", "jpeg"], "--wires: unknown image wire"),
        (["training.distort", "--classifier-set", "--spectra", ""], "--spectra: spectra must be"),
        (["training.spectrum_probe", "--compare", "luma,hue"], "--compare: spectra must be"),
        (["benchmarks.spectrum_cost", "--models", "/no/such/folder"], "not found"),
        (["benchmarks.spectrum_cost", "--repeats", "1"], "--repeats must be"),
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
def test_cli_bad_input_is_one_line_and_nonzero(argv, reason, capsys):
    code = _in_process(argv[0], argv[1:])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().startswith("error:") and reason in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("module", MODULES)
def test_every_cli_main_block_goes_through_run_cli(module):
    """What the in-process cases rely on: `python -m module` is run_cli over main/get_args_parser."""
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations is not None:  # a package (export, an experiment): its __main__
        spec = importlib.util.find_spec(f"{module}.__main__")
    path = spec.origin
    tail = open(path).read().rsplit('if __name__ == "__main__":', 1)[-1]
    assert "sys.exit(run_cli(main, get_args_parser))" in tail or (
        module == "export" and "sys.exit(_run())" in tail
    )


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["training.distort", "--distortion-type", "fog"], "unknown distortion type 'fog'"),
        (["export.pipeline", "--exported", "/no/such/folder"], "holds neither an export"),
    ],
)
def test_a_real_process_exits_2_with_one_line(argv, reason):
    r = _cli(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
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


@pytest.mark.parametrize("module", MODULES)
def test_cli_help(module, capsys):
    assert _in_process(module, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--" in out
