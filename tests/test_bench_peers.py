"""The TFMOT peer script (``bench/peers/tfmot_peer.py``) in quick mode, in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_tfmot = pytest.mark.skipif(
    not (_has("tensorflow_model_optimization") and _has("tf_keras")),
    reason="TFMOT and tf_keras (the bench extra) are not installed")


@pytest.fixture(scope="module")
def peer_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("peer") / "tfmot.json"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.peers.tfmot_peer", "--out", str(out), "--quick",
         "--seed", "0"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@needs_tfmot
def test_peer_records_every_method(peer_results):
    r = peer_results
    assert r["errors"] == {}
    assert r["keras_module"].startswith("tf_keras")  # really ran on legacy Keras 2
    assert set(r["methods"]) == {"prune-90", "prune-95", "cluster-16", "qat-int8"}
    assert r["plain_fit_seconds"] > 0
    for row in r["methods"].values():
        assert 0.1 < row["accuracy"] <= 1.0  # well above chance is not asked in 1 epoch
        assert row["finetune_seconds"] > 0 and row["time_ratio"] > 0
        assert Path(row["path"]).exists()
        assert 0 < row["zipped_bytes"] <= Path(row["path"]).stat().st_size


@pytest.mark.slow
@needs_tfmot
def test_peer_pruning_reaches_target_and_strips(peer_results):
    for name, target in (("prune-90", 0.9), ("prune-95", 0.95)):
        row = peer_results["methods"][name]
        assert row["kernel_sparsity"] == pytest.approx(target, abs=0.005)
        # The stripped file loads with plain Keras 3 and gives the same accuracy.
        assert row["loads_keras3"] is True
        assert row["accuracy_keras3"] == pytest.approx(row["accuracy"], abs=1e-9)
        # The unstripped file needs TFMOT's wrapper layer, in Keras 3 and in tf_keras alone.
        assert row["unstripped_loads_keras3"] is False
        assert row["unstripped_loads_tf_keras_without_tfmot"] is False
    checks = peer_results["load_check"]
    assert "PruneLowMagnitude" in checks["prune-90-unstripped"]["error"]
    assert checks["_tfmot_imported"] is False and checks["_compress_imported"] is False
    # Sparser model zips smaller than the dense one.
    dense = peer_results["baseline"]["zipped_bytes"]
    assert peer_results["methods"]["prune-95"]["zipped_bytes"] < \
        peer_results["methods"]["prune-90"]["zipped_bytes"] < dense


@pytest.mark.slow
@needs_tfmot
def test_peer_cluster_and_qat(peer_results):
    cluster = peer_results["methods"]["cluster-16"]
    assert cluster["max_unique_kernel_values"] <= 16
    assert cluster["loads_keras3"] is True
    qat = peer_results["methods"]["qat-int8"]
    assert Path(qat["path"]).suffix == ".tflite"
    # full int8: about a quarter of the float32 weights (266,610 params * 4 bytes)
    assert qat["tflite_bytes"] < 0.3 * 4 * peer_results["baseline"]["params"]
    assert abs(qat["accuracy"] - qat["keras_accuracy"]) <= 0.05


@pytest.mark.slow
@needs_tfmot
def test_peer_uses_the_same_split_as_ours(peer_results):
    from bench.peers.tfmot_peer import fingerprint
    from compress.data import load_data

    ds = load_data("mnist5k", 0).take(600, 300)
    assert peer_results["data"]["test_fingerprint"] == fingerprint(ds.x_test, ds.y_test)
    assert peer_results["data"]["train_fingerprint"] == fingerprint(ds.x_train, ds.y_train)


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
