"""The benchmark harness itself: discovery of every case, a quick run, the Markdown it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# The cases `make test` runs through the harness: the baselines, the export-parity targets,
# the TFMOT peer in its own process, a case without TensorFlow, and the summary that reads
# the others. The whole quick run (every case, about 5 minutes) is `make bench-quick`; it
# took 7 of `make test`'s 20 minutes with the other tests sharing the cores, so it is run
# before a change lands (docs/developing.md), not in every test run.
HARNESS_CASES = ("baselines", "export-parity", "registry", "tfmot-head-to-head",
                 "reliability-refusals", "published")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m bench --quick --only HARNESS_CASES`` (two at a time), run once."""
    tmp = tmp_path_factory.mktemp("bench")
    out, work = tmp / "BENCH.md", tmp / "work"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", *HARNESS_CASES,
                           "--out", str(out), "--work-dir", str(work)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=False, timeout=1200)
    return proc, out, work


@pytest.mark.slow
def test_quick_run_of_the_harness_cases_writes_markdown_with_targets(quick_run):
    proc, out, _work = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks (quick mode")
    assert "Cases ran 2 at a time in child processes" in text
    assert "| tensorflow | " in text and "## Targets: " in text
    assert "Case failed" not in text
    listed = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, check=True).stdout.split()
    assert set(HARNESS_CASES) <= set(listed)
    # one section per case, each with its wall time, the summary (published) last
    assert text.count("_Case wall time: ") == len(HARNESS_CASES)
    assert text.rindex("## Published results beside ours") > text.rindex("## Peers: TFMOT")
    # every case ran: their progress lines, from the child processes
    for name in HARNESS_CASES:
        assert f"[bench] {name} done in" in proc.stderr
    # the export-parity targets are met even in quick mode (exports are exact)
    assert "max abs diff <= 1e-4" in text
    parity = [line for line in text.splitlines() if "max abs diff <= 1e-4, top-1" in line]
    assert len(parity) >= 4 and all(line.endswith("| yes |") for line in parity)


def test_a_run_retrains_baselines_instead_of_reusing_an_earlier_runs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    stale = work / "baseline-lenet300-mnist5k-s0-e2-q1.keras"
    stale.write_bytes(b"from an earlier run, maybe an older recipe")
    other = work / "notes.txt"
    other.write_text("kept")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "published",
                           "--out", str(tmp_path / "B.md"), "--work-dir", str(work)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale.exists() and other.read_text() == "kept"


# The TFMOT peer (bench/peers/tfmot_peer.py) as the quick run ran it: its JSON.
def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_tfmot = pytest.mark.skipif(
    not (_has("tensorflow_model_optimization") and _has("tf_keras")),
    reason="TFMOT and tf_keras (the bench extra) are not installed")


@pytest.fixture(scope="module")
def peer_results(quick_run):
    proc, _out, work = quick_run
    path = work / "tfmot-peer-s0-q1.json"
    assert path.exists(), proc.stderr[-2000:]
    return json.loads(path.read_text())


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


def test_a_baseline_is_the_same_whichever_case_trains_it_first(tmp_path):
    # Cases running in parallel race to train a shared baseline: the winner's random state
    # before the call must not change the model (the initial weights included).
    import keras

    from bench.baselines import trained
    from bench.harness import Context

    def train(work):
        ctx = Context(quick=True, seed=0, plot_dir=tmp_path, work_dir=tmp_path / work)
        ctx.work_dir.mkdir()
        return trained("lenet300", "mnist5k", ctx)[0].get_weights()

    first = train("a")
    keras.utils.set_random_seed(123)
    keras.layers.Dense(300).build((None, 784))  # a case that built something else first
    second = train("b")
    assert all(np.array_equal(u, v) for u, v in zip(first, second))
