"""The benchmark harness itself: discovery of every case, a quick run, the Markdown it writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def test_every_case_module_imports_and_is_listed():
    proc = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=True)
    names = proc.stdout.split()
    for case in ("export-parity", "pruning", "sharing-hash", "sharing-kmeans", "quantization",
                 "callbacks-cascade", "callbacks-schedules", "distillation",
                 "tfmot-head-to-head", "scaling", "deployment", "published"):
        assert case in names


def test_unknown_case_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unknown case" in proc.stderr


@pytest.mark.slow
def test_quick_run_writes_markdown_with_targets(tmp_path):
    out = tmp_path / "BENCH.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "export-parity",
                           "published", "--out", str(out)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks (quick mode")
    assert "| tensorflow | " in text and "## Targets: 4 of 4 met" in text
    assert "## Published results beside ours" in text
    assert "max abs diff <= 1e-4" in text
