"""``python -m michigrad demo``: micrograd's demo numbers, the accuracy line, the PNG, and the
optional extras (tqdm, matplotlib, even NumPy) missing without stopping the training."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import make_moons as sklearn_make_moons

from michigrad.__main__ import main, train
from michigrad.datasets import _make_moons_pure, make_moons

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_python(code: str, cwd: os.PathLike) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


# ========================================================================== the data

@pytest.mark.parametrize("n_samples", [100, 7, 1, (3, 5), 1000])
@pytest.mark.parametrize("noise", [None, 0.1, 0.3])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("seed", [0, 1337, 2**32 - 1])
def test_make_moons_is_sklearns_bit_for_bit(n_samples, noise, shuffle, seed):
    theirs = sklearn_make_moons(n_samples=n_samples, noise=noise, shuffle=shuffle, random_state=seed)
    ours = make_moons(n_samples, noise=noise, shuffle=shuffle, random_state=seed)
    assert ours[0].tobytes() == theirs[0].tobytes() and ours[0].shape == theirs[0].shape
    assert ours[1].dtype == theirs[1].dtype and (ours[1] == theirs[1]).all()
    # the pure-Python generator (used without NumPy) replays NumPy's draws exactly
    n_out, n_in = n_samples if isinstance(n_samples, tuple) else (n_samples // 2,
                                                                  n_samples - n_samples // 2)
    X, y = _make_moons_pure(n_out, n_in, shuffle, noise, seed)
    assert np.array(X, dtype=float).reshape(-1, 2).tobytes() == theirs[0].tobytes()
    assert y == theirs[1].tolist()


def test_make_moons_uses_numpys_global_state_like_sklearn():
    np.random.seed(1337)
    theirs = sklearn_make_moons(n_samples=100, noise=0.1)
    after_theirs = np.random.rand()
    np.random.seed(1337)
    ours = make_moons(n_samples=100, noise=0.1)
    after_ours = np.random.rand()
    assert ours[0].tobytes() == theirs[0].tobytes() and (ours[1] == theirs[1]).all()
    assert after_ours == after_theirs  # the same draws were consumed
    rs = np.random.RandomState(5)
    assert make_moons(10, noise=0.2, random_state=rs)[0].tobytes() == sklearn_make_moons(
        n_samples=10, noise=0.2, random_state=np.random.RandomState(5))[0].tobytes()


def test_make_moons_rejects_bad_arguments():
    with pytest.raises(ValueError, match="random_state"):
        make_moons(10, random_state="seed")
    with pytest.raises(ValueError, match="non-negative"):
        make_moons(10, noise=-0.1)
    with pytest.raises(ValueError, match="two-element"):
        make_moons((1, 2, 3))
    with pytest.raises(ValueError, match="between 0 and 2\\*\\*32 - 1"):
        _make_moons_pure(5, 5, True, 0.1, 2**32)


# ======================================================================== the command

def test_demo_trains_to_full_accuracy_and_writes_the_png(tmp_path, capsys):
    out = tmp_path / "boundary.png"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("michigrad demo: MLP(2, [16, 16, 1]), 337 parameters")
    assert "seed 1337, 100 steps" in lines[0]
    assert lines[1].startswith("loss 0.895844 -> 0.0109")
    assert "final accuracy: 100.0%" in lines
    assert f"decision boundary written to {out}" in lines
    assert printed.err == ""  # not a terminal: no progress bar
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 300 < width < 2000 and 300 < height < 2000


def test_verbose_prints_microgrades_lines_with_its_numbers(capsys):
    assert main(["demo", "--steps", "2", "--out", "", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "step 0 loss 0.8958441028683222, accuracy 50.0%" in lines
    step1 = [line for line in lines if line.startswith("step 1 loss ")][0]
    assert float(step1.split()[3].rstrip(",")) == pytest.approx(1.7235905336972022, abs=1e-12)
    assert not any("decision boundary" in line for line in lines)


def test_train_returns_the_model_data_and_losses():
    model, (X, y), losses, accuracy = train(steps=3, seed=1337)
    assert len(losses) == 3 and losses[0] == 0.8958441028683222
    assert losses[1] == pytest.approx(1.7235905336972022, abs=1e-12)
    assert len(model.parameters()) == 337 and 0.5 <= accuracy <= 1.0
    assert len(X) == 100 and sorted(set(y)) == [-1, 1] and sum(y) == 0


def test_seed_changes_the_run(capsys):
    main(["demo", "--steps", "1", "--out", "", "--seed", "7", "--verbose"])
    assert "step 0 loss 0.8958441028683222" not in capsys.readouterr().out


def test_progress_bar_on_a_terminal_shows_the_loss(monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["demo", "--steps", "3", "--out", ""]) == 0
    bar = terminal.getvalue()
    assert "training" in bar and "3/3" in bar and "loss 0." in bar and "accuracy" in bar


def test_without_tqdm_a_terminal_gets_a_note_naming_the_extra(monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    assert main(["demo", "--steps", "2", "--out", ""]) == 0
    assert "pip install michigrad[progress]" in terminal.getvalue()
    assert "final accuracy" in capsys.readouterr().out


def test_without_matplotlib_training_runs_and_the_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "never.png"
    assert main(["demo", "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "final accuracy" in printed.out
    assert "matplotlib is not installed" in printed.err
    assert "pip install michigrad[plot]" in printed.err
    assert not out.exists()


def test_without_numpy_the_demo_gets_the_same_data_and_numbers(tmp_path):
    run = run_python("""
        import sys
        sys.modules["numpy"] = None  # as if NumPy were not installed
        from michigrad.__main__ import main
        main(["demo", "--steps", "1", "--verbose", "--out", "x.png"])
    """, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "step 0 loss 0.8958441028683222, accuracy 50.0%" in run.stdout
    assert "pip install michigrad[plot]" in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_command_line_entry_point(tmp_path):
    out = tmp_path / "b.png"
    run = subprocess.run([sys.executable, "-m", "michigrad", "demo", "--steps", "5", "--out",
                          str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "final accuracy:" in run.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert run.stderr == ""


@pytest.mark.parametrize("argv,message", [
    (["demo", "--steps", "0"], "--steps must be at least 1"),
    (["demo", "--seed", "-1"], "--seed must be in"),
    ([], "the following arguments are required: command"),
    (["train"], "invalid choice: 'train'"),
    # a place the plot cannot be written: refused before training, not after it
    (["demo", "--out", "/no/such/folder/plot.png"], "--out: the folder /no/such/folder does not exist"),
    (["demo", "--out", "."], "--out: . is a folder; give a file name, e.g. ./decision_boundary.png"),
])
def test_bad_arguments_exit_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert message in err
    assert out == ""  # nothing ran: no training line
