"""The TFMOT peer script (``bench/peers/tfmot_peer.py``): its refusals and schedule. What it
measures is checked on the quick bench run's output, in ``tests/test_bench.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_peer_refuses_to_run_without_legacy_keras(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.peers.tfmot_peer", "--out", str(tmp_path / "x.json")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "TF_USE_LEGACY_KERAS=1" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_schedule_steps_end_on_a_pruning_step():
    from bench.peers.tfmot_peer import schedule_steps

    for n, batch, epochs in ((3600, 64, 10), (600, 64, 1), (100, 32, 3)):
        end, freq, steps = schedule_steps(n, batch, epochs, 0.7)
        assert end % freq == 0 and 0 < end <= steps
