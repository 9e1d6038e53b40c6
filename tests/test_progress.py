"""Progress display (compress/progress.py): phases, the plan's overall ETA, terminal
redraws vs plain lines, and the CLI's stderr with --json and --quiet."""

from __future__ import annotations

import io
import json
import re

import pytest

from compress import progress

ESCAPE = re.compile(r"\x1b|\r")


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress, "clock", clock)
    return clock


def test_phase_and_overall_eta_arithmetic_on_a_fake_clock(fake_clock):
    """A phase's ETA is its own pace; the overall ETA adds the plan's weight left at the
    seconds per weight measured so far (loading, fixed, is not a measure of the rate)."""
    with progress.enabled(True, stream=io.StringIO(), plan=True):
        plan = progress._PLAN.get()
        progress.expect("loading", 1, fixed=True)
        progress.expect("saliency", 2)
        progress.expect("training", 4, runs=2)  # two fits of 2 epochs each
        with progress.phase("loading", fixed=True):
            fake_clock.now += 30.0  # start-up: says nothing about the rate
        with progress.phase("saliency", total=10, unit="batch") as p:
            assert p.eta() is None and plan.eta(current=p) is None  # nothing measured
            fake_clock.now += 4.0
            p.update(4)
            assert p.eta() == pytest.approx(6.0)  # 4 s for 40%: 6 s left
            # rate: 4 s for 0.8 weight = 5 s/weight; left: 6 s here + 4 weight * 5 s
            assert plan.eta(current=p) == pytest.approx(6.0 + 4 * 5.0)
            fake_clock.now += 6.0
            p.update(10)
        assert plan.eta() == pytest.approx(4 * 5.0)  # saliency took 10 s for weight 2
        with progress.phase("training", total=2, unit="epoch") as p:
            fake_clock.now += 20.0
            p.advance()  # one epoch of the first fit (weight 2) in 20 s
            assert p.eta() == pytest.approx(20.0)
            # rate: (10 + 20) s / (2 + 1) weight = 10 s/weight; 20 s here + 2 weight left
            assert p.overall_eta() == pytest.approx(20.0 + 2 * 10.0)
        assert progress.fmt_seconds(65) == "1m05s" and progress.fmt_seconds(3700) == "1h01m"


def test_terminal_display_redraws_one_line_per_phase(fake_clock):
    """In a terminal each phase is one line redrawn with \\r (rate-limited), ended by one
    final line; a message in between is printed above it and the line is drawn again."""
    term = FakeTerminal()
    with progress.enabled(True, stream=term, plan=True):
        with progress.phase("calibration", total=200, unit="batch") as p:
            for _ in range(100):  # no time passes: redraws are rate-limited
                p.advance()
            for _ in range(100):
                fake_clock.now += 0.05
                p.advance()
            progress.say("a message")
        with progress.phase("verification", detail="256 inputs in LiteRT"):
            fake_clock.now += 2.0
    out = term.getvalue()
    lines = out.split("\n")
    assert lines[-1] == ""  # every line ended
    finals = [line.rsplit("\r", 1)[-1] for line in lines[:-1]]
    assert len(lines) == 4  # one message, two phases: no line per step
    assert finals[0] == "compress: a message"
    assert finals[1].startswith("compress: calibration [####################] 100% | done in "
                                "5s | 200/200 batches")
    assert finals[2].startswith("compress: verification | done in 2s | 256 inputs in")
    draws = lines[0].count("\r")
    assert 25 <= draws <= 75, draws  # ~every 0.1 s of 5 s, not once per step (200)
    assert "ETA" in lines[0] and "%" in lines[0]


def test_plain_lines_are_throttled_and_have_no_escape_codes(fake_clock):
    """Piped: a start line, at most one line every PLAIN_INTERVAL s, a done line; no \\r
    and no escape codes."""
    out = io.StringIO()
    with progress.enabled(True, stream=out, plan=True), \
            progress.phase("saliency", total=100, unit="sample", detail="obd") as p:
        for _ in range(100):
            fake_clock.now += 0.25
            p.advance()
    text = out.getvalue()
    assert not ESCAPE.search(text)
    lines = text.splitlines()
    assert lines[0] == "compress: saliency: obd (100 samples)"
    assert lines[-1] == "compress: saliency: done in 25s (100 samples)"
    middle = lines[1:-1]
    assert len(middle) == 5, middle  # 25 s at one line per 5 s
    assert middle[0] == "compress: saliency: 20/100 samples (20%), ETA 20s, overall ETA 20s"


def test_off_prints_nothing(capsys):
    with progress.phase("loading") as p:
        p.advance()
        progress.update(3, 10)
    progress.say("hidden")
    assert capsys.readouterr().err == ""


def _prune(cli, path, out, *extra):
    return cli("prune", path, "-o", out, "--sparsity", "0.5", "--data", "digits",
               "--epochs", "2", "--json", *extra)


def test_cli_piped_progress_lines_with_epochs_and_overall_eta(cli, tmp_path, mlp_file,
                                                               monkeypatch):
    """COMPRESS_PROGRESS=1 without a terminal: plain lines on stderr only (stdout is the
    JSON alone): what is loaded first, each phase's start and end, one line per epoch
    with the loss, the sparsity, the fit's ETA and the overall ETA; --quiet: nothing."""
    path, _ = mlp_file
    monkeypatch.setenv("COMPRESS_PROGRESS", "1")
    try:
        result = _prune(cli, path, tmp_path / "p.keras", "--schedule", "gradual")
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)  # nothing else on stdout
        err = result.stderr
        assert not ESCAPE.search(err)
        lines = err.splitlines()
        assert lines[0] == f"compress: loading: {path}"
        for name in ("loading", "measuring", "training", "saving"):
            assert any(line.startswith(f"compress: {name}: done in ") for line in lines), name
        assert "compress: training: started (2 epochs)" in lines
        epochs = [line for line in lines if line.startswith("compress: training: epoch")]
        assert [e.split("epoch ")[1].split(",")[0] for e in epochs] == ["1/2", "2/2"]
        assert "loss " in epochs[0] and "/epoch" in epochs[0] and "sparsity " in epochs[0]
        assert ", ETA " in epochs[0] and "overall ETA " in epochs[0]
        assert ", ETA " not in epochs[1]  # the fit is over; the overall ETA may remain
        quiet = _prune(cli, path, tmp_path / "q.keras", "--epochs", "1", "--quiet")
        assert quiet.exit_code == 0 and quiet.stderr == ""
        json.loads(quiet.stdout)
    finally:
        progress.set_on(False)


def test_cli_terminal_progress_is_one_redrawn_line_per_phase(cli, tmp_path, mlp_file,
                                                             monkeypatch):
    """With stderr a terminal: each phase is one line redrawn with \\r and ended once;
    the training line shows the epoch, the loss, the sparsity and ETAs."""
    path, _ = mlp_file
    monkeypatch.delenv("COMPRESS_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "isatty", lambda stream: True)
    monkeypatch.setattr(progress, "TTY_INTERVAL", 0.0)  # every update drawn: all visible
    try:
        result = _prune(cli, path, tmp_path / "t.keras", "--method", "obd")
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)
        finals = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")[:-1]]
        phases = [f.split()[1] for f in finals if " done in " in f]
        assert phases == ["loading", "measuring", "saliency", "training", "saving"], finals
        saliency = next(line for line in result.stderr.split("\n")
                        if "compress: saliency" in line)
        assert "samples (round 1/1: obd masks to 50.0% sparsity)" in saliency  # per step
        training = next(line for line in result.stderr.split("\n")
                        if "compress: training" in line)
        assert training.count("\r") > 2  # redrawn in place
        assert "epoch 2/2" in training and "loss " in training and "overall ETA" in training
        assert "step " in training  # per batch in a terminal
    finally:
        progress.set_on(False)


def test_cli_piped_keras_fit_output_is_one_plain_line_per_epoch(cli, tmp_path, mlp_file,
                                                                monkeypatch):
    """Progress off and stdout piped (a log file, CI): Keras's own fit output is one
    plain line per epoch, without its bar's colour codes and carriage returns, on stderr:
    stdout holds the report alone (``compress prune ... > report.txt``)."""
    path, _ = mlp_file
    monkeypatch.setenv("COMPRESS_PROGRESS", "0")
    result = cli("prune", path, "-o", tmp_path / "p.keras", "--sparsity", "0.5", "--data",
                 "digits", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "Epoch 2/2" in result.stderr and "loss:" in result.stderr
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr
    assert "Epoch" not in result.stdout and "sparsity" in result.stdout  # the report
    recipe = tmp_path / "r.yaml"  # compress run: the same
    recipe.write_text(f"name: r\ndata: digits\nmodel: {path}\nsteps:\n"
                      "  - prune: {sparsity: 0.5, epochs: 2}\n")
    result = cli("run", recipe, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Epoch 2/2" in result.stderr and "\x1b[" not in result.stderr
    assert "Epoch" not in result.stdout
