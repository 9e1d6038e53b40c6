"""Nothing lost: Ctrl-C leaves no output, --checkpoint-dir resumes. (--strategy mirrored on
two logical CPUs, for prune, distill, k-means, hashing and QAT: tests/test_multiworker.py.)"""

import json
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
    code, _, first_err = _interrupt_after(cmd, 4, marker_dir=ck)
    assert code == 130
    done = [int(line.split("/")[0].split()[-1]) for line in first_err.splitlines()
            if line.startswith("Epoch ")]
    epochs = _resume(cmd[3:])
    assert done and epochs, "Keras printed its epoch lines"
    assert epochs[0] > 1, f"resumed at epoch {epochs[0]}, after {max(done)} done"
    assert out.exists()


def test_ctrl_c_while_a_backup_is_written_keeps_the_previous_epoch(tmp_path, monkeypatch):
    """A Ctrl-C inside the weights write must not leave a half-written backup to resume from."""
    import json

    import keras

    from compress.training_context import AtomicBackupAndRestore

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
    from compress.training_context import _sigint_held

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


# -- resume of every training command: distill, cascade, share --method hash --------------
# The interrupted run is the real CLI with each epoch slowed down (so that SIGINT lands
# while the wanted fit is under way whatever the machine's load); the resumed run is the
# plain CLI, whose Keras "Epoch N/M" lines show where each fit started.
SLOW_CLI = """
import sys, time
import keras
from compress import training
from compress.cli import main

fit_model = training.fit_model

class OneEpochAtATime(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(0.3)

def slowed(model, x, y=None, *, callbacks=None, **kwargs):
    return fit_model(model, x, y, callbacks=[*(callbacks or []), OneEpochAtATime()], **kwargs)

training.fit_model = slowed
sys.exit(main(sys.argv[1:]))
"""


def _interrupt_at_epoch(args, metadata, epochs_done):
    """Run the CLI with ``args`` (slowed down); send SIGINT once the backup ``metadata``
    file counts ``epochs_done`` finished epochs. Returns (code, stdout, stderr, epochs
    the backup holds)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see above
    try:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if metadata.exists() and json.loads(metadata.read_text())["epoch"] >= epochs_done:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    held = json.loads(metadata.read_text())["epoch"] if metadata.exists() else None
    return proc.returncode, out, err, held


def _epoch_lines(stderr):
    """The epoch numbers of Keras's "Epoch N/M" lines (on stderr: stdout is the report)."""
    return [int(line.split("/")[0].split()[-1]) for line in stderr.splitlines()
            if line.startswith("Epoch ")]


def _resume(args):
    """The re-run, in this process: the interrupted run was a real process stopped by a
    real SIGINT; resuming needs no signal, and no second TensorFlow start-up."""
    from click.testing import CliRunner

    from compress.cli import main

    resumed = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output[-800:]
    return _epoch_lines(resumed.stderr)


def _check_interrupted(code, err, out, ck, held, at_least):
    assert code == 130, err[-800:]
    assert "interrupted" in err and not out.exists()
    assert held is not None and held >= at_least, f"backup holds {held} epochs"


@pytest.mark.slow
def test_distill_resumes_its_distillation_fit_at_the_last_finished_epoch(tmp_path, mlp_file):
    out, ck = tmp_path / "student.keras", tmp_path / "ck"
    args = ["distill", mlp_file[0], "-o", out, "--data", "digits", "--width", "0.5",
            "--epochs", "5", "--checkpoint-dir", ck]
    # fit1 is the labels-only baseline, fit2 the distillation (Distiller.fit)
    code, _, err, held = _interrupt_at_epoch(args, ck / "fit2" / "training_metadata.json", 2)
    _check_interrupted(code, err, out, ck, held, 2)
    assert held < 5
    epochs = _resume(args)
    # the finished baseline is replayed whole; the distillation goes on after epoch `held`
    assert epochs == [1, 2, 3, 4, 5] + list(range(held + 1, 6))
    assert out.exists() and not any(ck.rglob("*.h5"))  # finished fits drop their backups


@pytest.mark.slow
def test_cascade_resumes_the_interrupted_stage(tmp_path, cnn_file):
    out, ck = tmp_path / "cascade.keras", tmp_path / "ck"
    args = ["cascade", cnn_file[0], "-o", out, "--data", "digits", "--epochs", "4", "--k", "0",
            "--fine-tune-epochs", "2", "--checkpoint-dir", ck]
    # two blocks: fit1 and fit2 are the stages, fit3 the end-to-end fine-tune
    code, _, err, held = _interrupt_at_epoch(args, ck / "fit2" / "training_metadata.json", 1)
    _check_interrupted(code, err, out, ck, held, 1)
    assert held < 4
    epochs = _resume(args)
    assert epochs == [1, 2, 3, 4] + list(range(held + 1, 5)) + [1, 2]
    assert out.exists() and not any(ck.rglob("*.h5"))


@pytest.mark.slow
def test_share_hash_resumes_its_fine_tune(tmp_path, mlp_file):
    out, ck = tmp_path / "hashed.keras", tmp_path / "ck"
    args = ["share", mlp_file[0], "-o", out, "--data", "digits", "--method", "hash",
            "--epochs", "5", "--checkpoint-dir", ck]
    code, _, err, held = _interrupt_at_epoch(args, ck / "fit1" / "training_metadata.json", 2)
    _check_interrupted(code, err, out, ck, held, 2)
    assert held < 5
    epochs = _resume(args)
    assert epochs == list(range(held + 1, 6))
    assert out.exists() and not any(ck.rglob("*.h5"))


# -- the same in process: fast, and the epoch counts exact --------------------------------
def _stop_after(epoch):
    """A callback that presses Ctrl-C at the end of 0-based ``epoch``, before its backup."""
    import keras

    def stop(e, logs):
        if e == epoch:
            raise KeyboardInterrupt

    return keras.callbacks.LambdaCallback(on_epoch_end=stop)


def _epochs_seen(seen):
    import keras

    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: seen.append(e))


def test_distill_in_a_training_context_resumes_the_distiller(tmp_path, mlp_file):
    import keras

    from compress.distillation import distill_step
    from compress.training_context import TrainingContext

    teacher, ds = keras.models.load_model(mlp_file[0]), mlp_file[1]
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt), TrainingContext(checkpoint_dir=ck):
        distill_step(teacher, ds, width=0.5, epochs=4, callbacks=[_stop_after(1)])
    # fit1 (the baseline) finished and dropped its backup; fit2 holds one finished epoch
    assert sorted(p.name for p in ck.iterdir()) == ["fit2"]
    assert json.loads((ck / "fit2" / "training_metadata.json").read_text())["epoch"] == 1
    seen = []
    with TrainingContext(checkpoint_dir=ck):
        _, info = distill_step(teacher, ds, width=0.5, epochs=4,
                               callbacks=[_epochs_seen(seen)])
    assert seen == [1, 2, 3] and info["epochs_run"] == 3
    assert 0.0 <= info["student_accuracy"] <= 1.0 and not any(ck.iterdir())


def test_cascade_in_a_training_context_resumes_its_stage(tmp_path, cnn_file, digits):
    import keras

    from compress.cascade import cascade_train
    from compress.training_context import TrainingContext

    model = keras.models.load_model(cnn_file[0], compile=False)
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt), TrainingContext(checkpoint_dir=ck):
        cascade_train(model, digits, epochs=3, k=0, callbacks=[_stop_after(1)])
    assert json.loads((ck / "fit1" / "training_metadata.json").read_text())["epoch"] == 1
    seen = []
    with TrainingContext(checkpoint_dir=ck):
        _, info = cascade_train(model, digits, epochs=3, k=0, callbacks=[_epochs_seen(seen)])
    assert seen == [1, 2] + [0, 1, 2]  # stage 1 from its second epoch, then stage 2 whole
    assert len(info["stages"]) == 2 and not any(ck.iterdir())


# -- SIGTERM: handled like Ctrl-C, with its own exit code (128 + 15) ---------------------
def _private_tmpdir_env(tmp_path):
    """An environment whose $TMPDIR is a fresh folder: whatever is left in it leaked."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    return dict(ENV, TMPDIR=str(tmpdir)), tmpdir


def _assert_terminated_cleanly(code, err, out_dir, tmpdir):
    assert code == 143, err[-800:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == ("error: terminated (SIGTERM); the input is untouched and no partial "
                         "output was left"), err[-800:]
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == [], "no output, no partial file"
    assert list(tmpdir.iterdir()) == [], "no temporary folder left in $TMPDIR"


@pytest.mark.slow
def test_sigterm_during_training_exits_143_and_leaves_nothing(tmp_path, mlp_file):
    digest = file_digest(mlp_file[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env, tmpdir = _private_tmpdir_env(tmp_path)
    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "prune", str(mlp_file[0]), "-o",
         str(out_dir / "pruned.keras"), "--data", "digits", "--epochs", "50", "--sparsity", "0.5",
         "--checkpoint-dir", str(ck)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True)
    metadata = ck / "fit1" / "training_metadata.json"
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and not metadata.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    _assert_terminated_cleanly(proc.returncode, err, out_dir, tmpdir)
    assert file_digest(mlp_file[0]) == digest
    assert json.loads(metadata.read_text())["epoch"] >= 1, "the backup to resume from stays"


# The SIGTERM lands while the output is being saved: right after Keras made its temporary
# folder in $TMPDIR (every .keras save makes one), the moment the run was killed in.
TERMINATED_WHILE_SAVING = """
import os, signal, sys, tempfile, time
from compress import io
from compress.cli import main

real_save_model, real_mkdtemp = io.save_model, tempfile.mkdtemp

def mkdtemp_then_sigterm(*args, **kwargs):
    folder = real_mkdtemp(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # Python runs the handler here, inside Keras's save
    return folder

def save_model(*args, **kwargs):
    tempfile.mkdtemp = mkdtemp_then_sigterm
    try:
        return real_save_model(*args, **kwargs)
    finally:
        tempfile.mkdtemp = real_mkdtemp

io.save_model = save_model
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_saving_leaves_no_partial_file_and_no_temp_folder(tmp_path, mlp_file):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env, tmpdir = _private_tmpdir_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", TERMINATED_WHILE_SAVING, "prune", str(mlp_file[0]), "-o",
         str(out_dir / "pruned.keras"), "--sparsity", "0.5"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    _assert_terminated_cleanly(proc.returncode, proc.stderr, out_dir, tmpdir)


def test_a_signal_while_writing_waits_for_the_writer_then_removes_its_file(tmp_path):
    """Under the CLI's handler a SIGTERM inside a write is held until the writer is done
    (its own clean-up cannot be cut short), then raised, and nothing is left."""
    from compress import io
    from compress.errors import INTERRUPT, Terminated

    previous = signal.signal(signal.SIGTERM, INTERRUPT.handler)
    steps = []
    try:
        with pytest.raises(Terminated), io.atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs the handler here: it only remembers
            tmp.write_bytes(b"whole")
            steps.append("writer finished")
    finally:
        signal.signal(signal.SIGTERM, previous)
        INTERRUPT.pending = False
    assert steps == ["writer finished"]
    assert list(tmp_path.iterdir()) == []
