"""Nothing lost: Ctrl-C leaves no output, --checkpoint-dir resumes, --strategy mirrored."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import file_digest

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _compress(*args):
    return [sys.executable, "-m", "compress.cli", *map(str, args)]


def _interrupt_after(cmd, seconds, marker_dir=None):
    """Start ``cmd``; send SIGINT once training is under way (or after ``seconds``)."""
    # A shell without job control starts background jobs with SIGINT ignored; the child
    # would inherit that and never raise KeyboardInterrupt. A handled signal is reset to its
    # default on exec, so installing one here for the spawn gives the child a normal Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if marker_dir is not None and any(marker_dir.rglob("*")) and \
                time.time() > deadline - 120 + seconds / 2:
            break
        if marker_dir is None and time.time() > deadline - 120 + seconds:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.slow
def test_ctrl_c_during_fine_tune_leaves_input_and_no_output(tmp_path, mlp_file):
    model_path = mlp_file[0]
    digest = file_digest(model_path)
    out = tmp_path / "pruned.keras"
    ck = tmp_path / "ck"
    code, _, err = _interrupt_after(
        _compress("prune", model_path, "-o", out, "--data", "digits", "--epochs", "400",
                  "--sparsity", "0.5", "--checkpoint-dir", ck), 20, marker_dir=ck)
    assert code == 130, err[-500:]
    assert "interrupted" in err
    assert file_digest(model_path) == digest
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "ck"] == []  # no partial file
    assert any(ck.rglob("*")), "a backup was written to resume from"


@pytest.mark.slow
def test_checkpoint_dir_resumes_the_same_command(tmp_path, mlp_file):
    out = tmp_path / "pruned.keras"
    ck = tmp_path / "ck"
    cmd = _compress("prune", mlp_file[0], "-o", out, "--data", "digits", "--epochs", "60",
                    "--sparsity", "0.5", "--checkpoint-dir", ck)
    code, first_out, _ = _interrupt_after(cmd, 4, marker_dir=ck)
    assert code == 130
    done = [int(line.split("/")[0].split()[-1]) for line in first_out.splitlines()
            if line.startswith("Epoch ")]
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    epochs = [int(line.split("/")[0].split()[-1]) for line in resumed.stdout.splitlines()
              if line.startswith("Epoch ")]
    assert done and epochs, "Keras printed its epoch lines"
    assert epochs[0] > 1, f"resumed at epoch {epochs[0]}, after {max(done)} done"
    assert out.exists()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, mlp_file):
    out = tmp_path / "pruned.keras"
    dist = tmp_path / "student.keras"
    script = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from compress.cli import main
for argv in (["prune", r"{mlp_file[0]}", "-o", r"{out}", "--data", "digits", "--epochs", "2",
              "--sparsity", "0.8", "--strategy", "mirrored", "--json"],
             ["distill", r"{mlp_file[0]}", "-o", r"{dist}", "--data", "digits", "--epochs", "1",
              "--width", "0.5", "--strategy", "mirrored", "--json", "--no-baseline"],
             ["quantize", r"{mlp_file[0]}", "-o", r"{tmp_path}/q.tflite", "--data", "digits",
              "--qat", "--epochs", "1", "--strategy", "mirrored", "--json", "--no-latency"]):
    main(argv, standalone_mode=False)
print("REPLICAS", tf.distribute.MirroredStrategy().num_replicas_in_sync)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "REPLICAS 2" in proc.stdout
    import keras

    pruned = keras.models.load_model(out)
    kernels = [np.asarray(layer.kernel) for layer in pruned.layers if hasattr(layer, "kernel")]
    zero = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zero >= 0.79  # masks held across replicas
    assert keras.models.load_model(dist).count_params() < pruned.count_params()
    assert (tmp_path / "q.tflite").stat().st_size > 0


def test_ctrl_c_while_a_backup_is_written_keeps_the_previous_epoch(tmp_path, monkeypatch):
    """A Ctrl-C inside the weights write must not leave a half-written backup to resume from."""
    import json

    import keras

    from compress.training import AtomicBackupAndRestore

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                              keras.layers.Dense(2, name="b")])
        m.compile("sgd", "mse")
        return m

    x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    first = model()
    first.fit(x, y, epochs=1, verbose=0)
    cb = AtomicBackupAndRestore(str(tmp_path))
    cb.set_model(first)
    cb.on_epoch_end(0)  # the backup of epoch 1, as fit writes it
    saved = [w.copy() for w in first.get_weights()]
    first.fit(x, y, epochs=1, verbose=0)  # weights move on; the backup still holds epoch 1
    cb._current_epoch = 2

    def interrupted_write(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(first, "save_weights", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        cb._save_model()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.weights.h5",
                                                          "training_metadata.json"]
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 1
    resumed = model()
    resumed.load_weights(tmp_path / "latest.weights.h5")
    for got, want in zip(resumed.get_weights(), saved):
        np.testing.assert_array_equal(got, want)


def test_a_ctrl_c_during_the_renames_is_held_until_they_are_done():
    from compress.training import _sigint_held

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # Python runs the handler here, between bytecodes
                steps.append("block finished")
            steps.append("not reached")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps == ["block finished"]


@pytest.mark.slow
def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_command(tmp_path, mlp_file):
    """TensorFlow runs many ``__del__`` methods; a Ctrl-C raised inside one is printed as
    "Exception ignored" and dropped. The CLI must still stop, exit 130 and write nothing."""
    out = tmp_path / "pruned.keras"
    script = f"""
import signal, sys
import keras
from compress import training
from compress.cli import main

class Finaliser:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # Python runs the handler inside __del__
        sum(range(1000))

class DropsOne(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            Finaliser()

real_fit = training.fit
training.fit = lambda model, data, callbacks=None, **kw: real_fit(
    model, data, callbacks=list(callbacks or []) + [DropsOne()], **kw)
sys.exit(main(["prune", r"{mlp_file[0]}", "-o", r"{out}", "--data", "digits", "--epochs", "3",
               "--sparsity", "0.5"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=600, check=False)
    assert "Exception ignored" in proc.stderr and "KeyboardInterrupt" in proc.stderr, \
        "the interrupt really was swallowed once"
    assert proc.returncode == 130, proc.stderr[-800:]
    assert "interrupted" in proc.stderr
    assert not out.exists()
