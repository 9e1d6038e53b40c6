"""--strategy multiworker and ``compress launch``: several local worker processes train as
one (tf.distribute.MultiWorkerMirroredStrategy on 127.0.0.1), the chief alone writes.

The runs happen in subprocesses (logical devices and the multi-worker runtime must be set
up before TensorFlow starts); they are few and small: one recipe (train, gradual 90%
pruning, distillation, k-means sharing, hashed layers, QAT) on 1 process, on ``mirrored``
over 2 logical CPU devices and on 2 workers, then one killed-and-resumed launch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ENV = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
ENV["TF_CPP_MIN_LOG_LEVEL"] = "3"
# 1,280 training samples: 20 global batches of 64, split evenly over 2 replicas, so the
# distributed mean loss is the one-process mean exactly.
N_TRAIN = 1280
PRUNE = ["--sparsity", "0.9", "--schedule", "gradual", "--frequency", "5",
         "--batch-size", "32", "--epochs", "8"]

SCRIPT = r'''
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from compress.cli import main
recipe, out, data, prune_out = sys.argv[1:5]
for strategy in ("none", "mirrored"):
    main(["run", recipe, "-o", f"{out}/{strategy}", "--json", "--strategy", strategy],
         standalone_mode=False)
# the reference of the resume test: one uninterrupted process
main(["prune", f"{out}/none/step0-baseline.keras", "-o", prune_out, "--data", data,
      "--json", *sys.argv[5:]], standalone_mode=False)
print("REPLICAS", tf.distribute.MirroredStrategy().num_replicas_in_sync)
'''


def _compress(*args):
    return [sys.executable, "-m", "compress.cli", *map(str, args)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The recipe on 1 process, on mirrored (2 logical devices) and on 2 workers."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("multiworker")
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    np.savez(root / "digits.npz", x_train=x[:N_TRAIN], y_train=y[:N_TRAIN],
             x_val=x[N_TRAIN:N_TRAIN + 128], y_val=y[N_TRAIN:N_TRAIN + 128],
             x_test=x[N_TRAIN + 128:], y_test=y[N_TRAIN + 128:])
    data = f"npz:{root / 'digits.npz'}"
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""name: multiworker-equivalence
seed: 0
data: {data}
model: lenet300
baseline: {{epochs: 2, learning_rate: 0.002}}
steps:
  - prune: {{sparsity: 0.9, schedule: gradual, epochs: 2, frequency: 5}}
  - distill: {{width: 0.5, epochs: 2, baseline: false}}
  - share: {{method: kmeans, clusters: 8, epochs: 1, from: baseline}}
  - share: {{method: hash, factor: 0.25, epochs: 1, from: baseline}}
  - quantize: {{mode: int8, format: tflite, qat: true, epochs: 1, from: baseline}}
""")
    single = subprocess.run([sys.executable, "-c", SCRIPT, recipe, root, data,
                             root / "reference.keras", *PRUNE], capture_output=True,
                            text=True, env=ENV, timeout=600, check=False)
    assert single.returncode == 0, single.stderr[-1500:]
    assert "REPLICAS 2" in single.stdout
    started = time.perf_counter()
    launched = subprocess.run(_compress("launch", "--workers", "2", "run", recipe, "-o",
                                        root / "multiworker", "--json"),
                              capture_output=True, text=True, env=ENV, timeout=600,
                              check=False)
    assert launched.returncode == 0, launched.stderr[-1500:]
    return {"root": root, "data": data, "stdout": launched.stdout,
            "seconds": time.perf_counter() - started}


def _kernels(path):
    import keras

    model = keras.models.load_model(path)
    return [np.asarray(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")]


def _accuracies(folder) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {s["kind"] + (f" {s['options']['method']}" if s["kind"] == "share" else ""):
            s["after"]["accuracy"] for s in report["steps"]}


def test_one_process_mirrored_and_two_workers_give_the_same_results(runs):
    root = runs["root"]
    # the chief alone printed: one JSON document, naming the real output folder
    printed = json.loads(runs["stdout"])
    assert printed["output"] == str(root / "multiworker")
    accuracy = {s: _accuracies(root / s) for s in ("none", "mirrored", "multiworker")}
    for strategy in ("mirrored", "multiworker"):
        for step in ("prune", "distill"):
            assert abs(accuracy[strategy][step] - accuracy["none"][step]) <= 0.005, \
                (strategy, step, accuracy)
        one = _kernels(root / "none" / "step1-prune.keras")
        other = _kernels(root / strategy / "step1-prune.keras")
        zeros = sum(int((k == 0).sum()) for k in one) / sum(k.size for k in one)
        assert zeros >= 0.89
        for a, b in zip(one, other, strict=True):
            np.testing.assert_array_equal(a == 0, b == 0)  # the same masks
            np.testing.assert_allclose(a, b, atol=1e-4)
        for a, b in zip(_kernels(root / "none" / "step2-distill.keras"),
                        _kernels(root / strategy / "step2-distill.keras"), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert accuracy["none"]["prune"] > 0.5  # a trained model (chance: 0.1)
    assert sorted(p.name for p in (root / "multiworker").iterdir()) == \
        sorted(p.name for p in (root / "none").iterdir())


def test_kmeans_hashing_and_qat_match_one_process_and_mirrored(runs):
    """The other training passes of the recipe: k-means sharing (custom train step),
    hashed layers and QAT (moving activation ranges) under 2 workers."""
    root = runs["root"]
    accuracy = {s: _accuracies(root / s) for s in ("none", "mirrored", "multiworker")}
    for step in ("share kmeans", "share hash", "quantize"):
        assert accuracy["none"][step] > 0.5, (step, accuracy)  # trained (chance: 0.1)
        for strategy in ("mirrored", "multiworker"):
            assert abs(accuracy[strategy][step] - accuracy["none"][step]) <= 0.005, \
                (strategy, step, accuracy)
    # 2 workers do the 2-replica arithmetic of mirrored exactly: the same shared weights
    import keras

    from compress.layers import register_layers

    register_layers()  # HashedDense
    for name in ("step3-share.keras", "step4-share.keras"):
        for a, b in zip(keras.models.load_model(root / "mirrored" / name).get_weights(),
                        keras.models.load_model(root / "multiworker" / name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    centroids = [np.unique(k) for k in _kernels(root / "multiworker" / "step3-share.keras")]
    assert all(len(c) <= 8 for c in centroids)  # still 8 shared values per layer
    assert (root / "multiworker" / "step5-quantize.tflite").stat().st_size > 0


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc), oldest first."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(fields[19]), int(stat.parent.name)))
    return [child for _, child in sorted(found)]


def test_a_killed_worker_fails_the_launch_in_one_line_and_the_rerun_resumes(
        runs, tmp_path, tmp_path_factory):
    base = runs["root"] / "none" / "step0-baseline.keras"
    out, ck = tmp_path / "pruned.keras", tmp_path / "ck"
    cmd = _compress("launch", "--workers", "2", "prune", base, "-o", out, "--data",
                    runs["data"], *PRUNE, "--checkpoint-dir", ck)
    scratch = tmp_path_factory.mktemp("tmpdir")  # the launch's TMPDIR
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(ENV, TMPDIR=str(scratch)))
    meta = ck / "fit1" / "training_metadata.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            meta.exists() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 2):
        time.sleep(0.05)
    workers = _children(proc.pid)
    if proc.poll() is not None:
        pytest.fail(f"the launch ended first: {proc.communicate()[1][-1500:]}")
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    started = time.perf_counter()
    _, err = proc.communicate(timeout=120)
    assert time.perf_counter() - started < 30  # the other worker was stopped, no hang
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == "error: worker 1 exited with signal 9 (SIGKILL)"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert not list(scratch.glob("compress-*"))  # nor the killed worker's scratch folder
    done = json.loads(meta.read_text())["epoch"]
    assert 2 <= done < 8

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    epochs = [int(line.split("/")[0].split()[-1]) for line in resumed.stderr.splitlines()
              if line.startswith("Epoch ")]
    assert epochs[0] == done + 1, (done, epochs)  # from the last finished epoch on
    assert not ck.exists() or not any(ck.iterdir())  # a finished fit's backup is deleted
    for a, b in zip(_kernels(runs["root"] / "reference.keras"), _kernels(out), strict=True):
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_an_unreachable_worker_times_out_in_one_line(tmp_path, mlp_file):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port, other = free.getsockname()[1], None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        other = sock.getsockname()[1]
    free.close()
    config = {"cluster": {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{other}"]},
              "task": {"type": "worker", "index": 0}}
    out = tmp_path / "p.keras"
    started = time.perf_counter()
    proc = subprocess.run(
        _compress("prune", mlp_file[0], "-o", out, "--data", "digits", "--epochs", "1",
                  "--sparsity", "0.5", "--strategy", "multiworker"),
        capture_output=True, text=True, timeout=180, check=False,
        env=dict(ENV, TF_CONFIG=json.dumps(config), COMPRESS_CONNECT_TIMEOUT="3"))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: multiworker: the cluster did not connect within 3 s"), last
    assert f"127.0.0.1:{other}" in last
    assert time.perf_counter() - started < 90
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, message", [
    (None, "--strategy multiworker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG has no 'task'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG task index 2 is out of range: the cluster has 1 worker address"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG cluster worker[0] 'localhost': must be 'host:port'"),
])
def test_bad_tf_config_is_one_line_before_any_work(cli, tmp_path, monkeypatch, config,
                                                   message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if config is not None:
        monkeypatch.setenv("TF_CONFIG", config)
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read")
    result = cli("prune", model, "-o", tmp_path / "p.keras", "--sparsity", "0.5",
                 "--strategy", "multiworker")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_a_port_in_use_is_refused(cli, tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker",
                                                                    "index": 0}}))
        result = cli("prune", tmp_path / "m.keras", "-o", tmp_path / "p.keras",
                     "--sparsity", "0.5", "--strategy", "multiworker")
    assert result.exit_code == 1
    assert f"port {port} is already in use" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--workers", "0", "prune", "m.keras", "-o", "p.keras"], "--workers 0: must be at least 1"),
    (["--workers", "2"], "launch needs a command to run"),
    (["--workers", "2", "inspect", "m.keras"], "launch runs training commands"),
    (["--workers", "2", "prune", "m.keras", "-o", "p.keras", "--strategy", "mirrored"],
     "launch runs --strategy multiworker, not --strategy mirrored"),
])
def test_launch_refuses_bad_requests_in_one_line(cli, args, message):
    result = cli("launch", *args)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}")
    assert len(result.output.strip().splitlines()) == 1


def test_local_tf_config_and_free_ports():
    from compress import cluster

    ports = cluster.free_ports(3)
    assert len(set(ports)) == 3
    infos = [cluster.read_tf_config({"TF_CONFIG": cluster.local_tf_config(ports, i)})
             for i in range(3)]
    assert [i.is_chief for i in infos] == [True, False, False]
    assert infos[2].address == f"127.0.0.1:{ports[2]}" and infos[2].num_workers == 3
    chief = cluster.read_tf_config({"TF_CONFIG": json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker",
                                                                   "index": 0}})})
    assert not chief.is_chief and chief.name == "worker 0"
