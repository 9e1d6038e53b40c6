"""The TFMOT MobileNetV2 peer (``bench/peers/tfmot_mobilenetv2.py``): its refusal, its
schedule and its sparsity measure. The case itself runs (our side) in the quick bench run
of ``tests/test_bench.py``; the TFMOT process runs in the full benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_peer_refuses_to_run_without_legacy_keras(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.peers.tfmot_mobilenetv2", "--data", "d.npz",
         "--weights", "w.npz", "--out", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "TF_USE_LEGACY_KERAS=1" in proc.stderr
    assert not out.exists()


def test_end_step_is_on_the_frequency_grid_within_the_fit():
    import pytest

    from bench.peers.tfmot_mobilenetv2 import end_step

    for n, batch, epochs, freq in ((7200, 64, 2, 25), (7200, 64, 3, 28), (64, 16, 1, 1)):
        end, steps = end_step(n, batch, epochs, 2 / 3, freq)
        assert end % freq == 0 and 0 < end <= steps
        assert steps == -(-n // batch) * epochs
    with pytest.raises(ValueError, match="longer than the sparsity ramp"):
        end_step(600, 64, 1, 2 / 3, 28)  # 10 steps: TFMOT would never reach the target


def test_sparsity_counts_conv_and_dense_kernels_and_names_the_dense_ones():
    from bench.cases.tfmot_mobilenetv2 import _stand_in
    from bench.peers.tfmot_mobilenetv2 import pruned_kernel_sparsity

    model = _stand_in()
    convs = [la for la in model.layers if type(la).__name__ == "Conv2D"]
    k = np.asarray(convs[0].kernel)
    flat = k.reshape(-1).copy()
    flat[: flat.size // 2] = 0.0
    convs[0].kernel.assign(flat.reshape(k.shape))
    got = pruned_kernel_sparsity(model)
    counted = sum(int(np.prod(la.kernel.shape)) for la in model.layers
                  if type(la).__name__ in ("Conv2D", "Dense"))
    assert got["kernel_weights"] == counted
    assert np.isclose(got["kernel_sparsity"], (flat.size // 2) / counted)
    assert got["min_layer_sparsity"] == 0.0
    assert len(got["unpruned_kernels"]) == 2  # the 1x1 conv and the Dense head
    assert got["other_kernel_sparsity"] == 0.0  # the depthwise kernel is counted apart
