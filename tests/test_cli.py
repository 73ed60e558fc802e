"""The pyae command, run in-process through main(): train, resume, filters, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyae import cli
from pyae.cli import main
from pyae.checkpoint import load_checkpoint

TINY = ["--hidden", "8", "--limit", "200", "--batch-size", "50", "--loss", "cross_entropy", "--lr", "0.01",
        "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyae: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_train_resume_and_filters(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--out", out, "--epochs", "1", "--noise", "mask", "--noise-level", "0.3",
                            *TINY)
    assert code == 0, err
    assert "trained 1 epochs" in stdout
    assert err == ""  # --quiet
    checkpoint = out / "checkpoint.pt"
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.epoch == 1 and ckpt.config.n_hidden == 8 and ckpt.config.noise == "mask"
    assert ckpt.extra["data_settings"] == {"data": None, "data_key": None, "limit": 200, "val": None, "scale": None}
    history = json.loads((out / "history.json").read_text())
    assert history["history"]["epoch"] == [1]
    assert (out / "filters.png").stat().st_size > 0

    # Without --resume an existing run is never overwritten.
    code, _, err = run(capsys, "train", "--out", out, "--epochs", "2", *TINY)
    assert_usage_error(code, err, "already exists", "--resume")

    # Resuming may change --epochs, not the model or the optimization.
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--lr", "0.5", "--epochs", "2")
    assert_usage_error(code, err, "--lr", "0.5", "0.01", "only --epochs, --early-stopping, --device, --cuda-graph, --fused-backward may change")
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--mixed-precision", "bfloat16", "--epochs", "2")
    assert_usage_error(code, err, "--mixed-precision", "'bfloat16'", "None")
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--limit", "300", "--epochs", "2")
    assert_usage_error(code, err, "--limit", "300", "200", "same data")
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--data", tmp_path, "--epochs", "2")
    assert_usage_error(code, err, "--data", "None")
    code, stdout, err = run(capsys, "train", "--out", out, "--resume", "--epochs", "2", "--quiet")
    assert code == 0, err
    assert load_checkpoint(checkpoint).epoch == 2

    # ... and ends where a straight two-epoch run ends.
    straight = tmp_path / "straight"
    assert main(["train", "--out", str(straight), "--epochs", "2", "--noise", "mask", "--noise-level", "0.3",
                 *TINY]) == 0
    capsys.readouterr()
    a, b = load_checkpoint(checkpoint).model_state, load_checkpoint(straight / "checkpoint.pt").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)

    code, stdout, _ = run(capsys, "train", "--out", out, "--resume", "--epochs", "2", "--quiet")
    assert code == 0 and "already holds 2 epochs" in stdout
    # --fused-backward may change on resume (the same update up to rounding).
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--epochs", "3", "--no-fused-backward", "--quiet")
    assert code == 0, err
    resumed = load_checkpoint(checkpoint)
    assert resumed.epoch == 3 and resumed.config.fused_backward is False

    png = tmp_path / "grid.png"
    code, stdout, err = run(capsys, "filters", checkpoint, "--out", png, "--rows", "2", "--cols", "4")
    assert code == 0, err
    assert png.stat().st_size > 0 and str(png) in stdout
    (out / "filters.png").unlink()
    code, _, err = run(capsys, "filters", checkpoint)
    assert code == 0, err
    assert (out / "filters.png").exists()


def test_train_on_a_file_with_validation_then_encode(tmp_path, capsys):
    # A user's own data: a .npy file of values in [0, 255], rescaled per feature, a held-out
    # fifth with early stopping, the codes written by 'pyae encode' with the same scaling.
    import numpy as np

    generator = np.random.default_rng(0)
    data = (generator.random((120, 12)) * 255).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--out", out, "--data", tmp_path / "data.npy", "--scale", "minmax",
                            "--loss", "cross_entropy", "--hidden", "5", "--epochs", "3", "--batch-size", "16",
                            "--val-fraction", "0.2", "--early-stopping", "5", "--threads", "1", "--quiet")
    assert code == 0, err
    history = json.loads((out / "history.json").read_text())["history"]
    assert len(history["val_loss"]) == 3 and (out / "curves.png").stat().st_size > 0
    assert (out / "checkpoint.best.pt").exists() and not (out / "filters.png").exists()  # 12 inputs: no tiles
    code, stdout, err = run(capsys, "encode", out / "checkpoint.pt", "--data", tmp_path / "data.npy",
                            "--out", tmp_path / "codes.npy", "--device", "cpu", "--batch-size", "50")
    assert code == 0, err
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (120, 5) and codes.dtype == np.float32
    from pyae.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(out / "checkpoint.pt")
    scaled = (data - data.min(0)) / (data.max(0) - data.min(0))
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(scaled)).numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
    # The data options are part of the run: a resume with other ones is refused.
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--scale", "minmax-global", "--epochs", "4")
    assert_usage_error(code, err, "--scale", "minmax-global", "same data")
    code, _, err = run(capsys, "encode", out / "checkpoint.pt", "--data", tmp_path / "ragged.npy", "--out",
                       tmp_path / "c.npy")
    assert_usage_error(code, err, "--data", "ragged.npy")
    np.save(tmp_path / "narrow.npy", data[:, :5])
    code, _, err = run(capsys, "encode", out / "checkpoint.pt", "--data", tmp_path / "narrow.npy", "--out",
                       tmp_path / "c.npy")
    assert_usage_error(code, err, "5 features", "takes 12")


def test_train_with_mixed_precision(tmp_path, capsys):
    out = tmp_path / "amp"
    code, stdout, err = run(capsys, "train", "--out", out, "--epochs", "1", "--mixed-precision", "bfloat16", *TINY)
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.pt").config.mixed_precision == "bfloat16"
    loss = json.loads((out / "history.json").read_text())["history"]["loss"][0]
    assert 0 < loss < 1000


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run with space"
    real_train = cli.train
    interrupt_in_epoch = [2]

    def interrupted_train(*args, **kwargs):
        def interrupt(epoch, step, output):
            if epoch == interrupt_in_epoch[0] and step == 1:
                raise KeyboardInterrupt

        return real_train(*args, callback=interrupt, **kwargs)

    monkeypatch.setattr(cli, "train", interrupted_train)
    code, _, err = run(capsys, "train", "--out", out, "--epochs", "3", *TINY)
    assert code == 130
    assert "epoch 1 of 3" in err and str(out / "checkpoint.pt") in err
    assert "pyae train --out" in err and "--resume" in err and "'" in err  # the path is shell-quoted
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt").epoch == 1
    assert [n for n in os.listdir(out) if n.endswith(".tmp")] == []

    monkeypatch.setattr(cli, "train", real_train)
    code, _, err = run(capsys, "train", "--out", out, "--resume")
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.pt").epoch == 3

    # Interrupted before any checkpoint: says so.
    monkeypatch.setattr(cli, "train", interrupted_train)
    interrupt_in_epoch[0] = 1
    code, _, err = run(capsys, "train", "--out", tmp_path / "early", "--epochs", "3", *TINY)
    assert code == 130 and "no checkpoint was written" in err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--out", "{tmp}/a", "--bogus"], ["unrecognized arguments: --bogus", "pyae train --help"]),
        (["train"], ["--out"]),
        (["train", "--out", "{tmp}/a", "--epochs", "0"], ["--epochs", "positive integer"]),
        (["train", "--out", "{tmp}/a", "--lr", "abc"], ["--lr", "'abc'"]),
        (["train", "--out", "{tmp}/a", "--lr", "-1"], ["--lr", "lr must be"]),
        (["train", "--out", "{tmp}/a", "--noise", "mask", "--noise-level", "2"], ["--noise-level", "[0, 1]"]),
        (["train", "--out", "{tmp}/a", "--noise", "salt"], ["--noise", "salt"]),
        (["train", "--out", "{tmp}/a", "--sparsity-weight", "1"], ["sparsity_target"]),
        (["train", "--out", "{tmp}/a", "--loss", "cross_entropy", "--decoder-activation", "linear"], ["--loss", "sigmoid"]),
        (["train", "--out", "{tmp}/a", "--momentum", "1"], ["--momentum"]),
        (["train", "--out", "{tmp}/a", "--device", "tpu"], ["--device", "tpu"]),
        (["train", "--out", "{tmp}/a", "--device", "cpu", "--cuda-graph"], ["--cuda-graph", "CUDA device"]),
        (["train", "--out", "{tmp}/a", "--mixed-precision", "float8"], ["--mixed-precision", "float8"]),
        (["train", "--out", "{tmp}/a", "--mixed-precision", "bfloat16", "--dtype", "float64"],
         ["--mixed-precision", "dtype='float32'"]),
        (["train", "--out", "{tmp}/a", "--data", "{tmp}/no-such-dir"], ["--data", "no such file"]),
        (["train", "--out", "{tmp}/a", "--data", "{tmp}/file.txt"], ["--data", "file.txt", ".npy"]),
        (["train", "--out", "{tmp}/a", "--data", "{tmp}/ragged.csv"], ["--data", "ragged.csv", "line 2"]),
        (["train", "--out", "{tmp}/a", "--early-stopping", "2"], ["--early-stopping", "validation"]),
        (["train", "--out", "{tmp}/a", "--val-fraction", "1.5"], ["--val-fraction"]),
        (["encode", "{tmp}/missing.pt", "--out", "{tmp}/c.npy"], ["missing.pt", "does not exist"]),
        (["train", "--out", "{tmp}/a", "--data", "{tmp}"], ["not found", "train-images-idx3-ubyte"]),
        (["train", "--out", "{tmp}/a", "--resume"], ["no checkpoint", "without --resume"]),
        (["train", "--out", "{tmp}/file.txt"], ["not a directory"]),
        (["filters", "{tmp}/missing.pt"], ["missing.pt", "does not exist"]),
        (["filters", "{tmp}/file.txt"], ["file.txt", "not a readable pyae checkpoint"]),
        (["filters", "{tmp}/file.txt", "--rows", "0"], ["--rows"]),
        (["experiment"], ["--out"]),
        (["experiment", "--out", "{tmp}/e", "--device", "cuda:99"], ["--device"]),
        (["experiment", "--out", "{tmp}/e", "--data", "{tmp}/nowhere"], ["--data"]),
        (["experiment", "contractive", "--out", "{tmp}/e", "--data", "{tmp}"], ["--data", "its own data"]),
        (["experiment", "bogus", "--out", "{tmp}/e"], ["bogus", "mnist"]),
        ([], ["COMMAND"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, fragments):
    (tmp_path / "file.txt").write_text("not a checkpoint")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(capsys, *argv)
    assert_usage_error(code, err, *fragments)
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "checkpoint.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--out", tmp_path / "a", "--device", "cuda", *TINY[:-3])
    assert_usage_error(code, err, "--device", "CUDA is not available")
    code, _, err = run(capsys, "experiment", "--out", tmp_path / "e", "--device", "cuda", "--quick")
    assert_usage_error(code, err, "CUDA is not available")


def test_corrupt_checkpoint_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "train", "--out", out, "--resume")
    assert_usage_error(code, err, "checkpoint.pt", "not a readable pyae checkpoint")


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "train" in out and "experiment" in out and "filters" in out
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "--noise-level" in out and "--resume" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "pyae" in out


def test_experiment_command_prints_the_table(tmp_path, capsys, monkeypatch):
    from pyae.experiments import mnist as experiment

    calls = {}
    fake = {"settings": {}, "models": {
        "raw": {"test_accuracy": 0.896, "train_accuracy": 1.0, "mean_squared_jacobian_norm": None,
                "mean_activation": None, "train_seconds": 0.0},
        "vanilla": {"test_accuracy": 0.91, "train_accuracy": 0.95, "mean_squared_jacobian_norm": 12.5,
                    "mean_activation": 0.3, "train_seconds": 5.0}}}

    def fake_run(out_dir, **kwargs):
        calls.update(kwargs, out_dir=out_dir)
        return fake

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    code, out, err = run(capsys, "experiment", "--out", tmp_path / "e", "--quick", "--seed", "3", "--device", "cpu",
                         "--threads", "1")
    assert code == 0, err
    assert calls["quick"] is True and calls["seed"] == 3 and calls["device"] == "cpu" and calls["num_threads"] == 1
    assert "89.60%" in out and "vanilla" in out and "12.5" in out


def test_python_dash_m_pyae_help():
    result = subprocess.run([sys.executable, "-m", "pyae", "--help"], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "usage: pyae" in result.stdout and "experiment" in result.stdout


def test_options_left_out_are_absent_for_train():
    # train tells the options given from the defaults (a resume keeps the checkpoint's values):
    # the options it shares with experiment must not pick up experiment's defaults.
    args = cli.build_parser().parse_args(["train", "--out", "x"])
    for name in ("device", "seed", "data", "n_hidden", "lr"):
        assert not hasattr(args, name), name
    args = cli.build_parser().parse_args(["experiment", "--out", "x"])
    assert not hasattr(args, "seed")  # read with its default by the command
