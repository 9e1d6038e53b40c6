"""compress.training_context: one context that every fit obeys (backups, last good, strategy)."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest

from compress import training
from compress.errors import CompressError
from compress.training_context import TrainingContext, current_context


def _tiny():
    training.set_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)


def test_each_fit_gets_the_next_backup_folder_and_blocks_nest(tmp_path):
    model, x, y = _tiny()
    seen = []

    def record(epoch, logs):  # the backup of epoch 0 is on disk when epoch 1 ends
        if epoch == 1:
            seen.append(sorted(p.name for p in (tmp_path / "ck").iterdir()))

    spy = keras.callbacks.LambdaCallback(on_epoch_end=record)
    with TrainingContext(checkpoint_dir=tmp_path / "ck") as outer:
        training.fit_model(model, x, y, epochs=2, verbose=0, callbacks=[spy])
        with TrainingContext() as inner:
            assert current_context() is inner
            training.fit_model(model, x, y, epochs=1, verbose=0)
        assert current_context() is outer and inner.fits == 1
        training.fit_model(model, x, y, epochs=2, verbose=0, callbacks=[spy])
    assert seen == [["fit1"], ["fit2"]] and outer.fits == 2
    assert not any((tmp_path / "ck").iterdir())  # finished fits drop their backups
    with outer:  # entering again numbers from fit1: the same code finds the same folders
        assert outer.next_backup_dir() == str(tmp_path / "ck" / "fit1")


def test_outside_any_block_fits_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x, y = _tiny()
    context = current_context()
    assert context.checkpoint_dir is None and context.keep_last_good is None
    training.fit_model(model, x, y, epochs=1, verbose=0)
    assert list(tmp_path.iterdir()) == []


def test_keep_last_good_of_a_distillation_saves_the_student_as_it_was_given(tmp_path, digits):
    from compress.data import prepare
    from compress.distillation import distill

    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(16, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")], name="teacher")
    ds = copy.copy(prepare(teacher, digits))
    ds.x_train = ds.x_train.copy()
    ds.x_train[3] = np.inf  # NaN from the first batch: the starting weights are kept
    student = training.copy_model(teacher)
    target = tmp_path / "last.keras"
    with pytest.raises(CompressError, match="NaN or infinite") as err, \
            TrainingContext(keep_last_good=target):
        distill(teacher, student, ds, epochs=2)
    assert str(target) in str(err.value)
    kept = keras.models.load_model(target)
    # the student's own softmax is back on (distillation trains on its logits)
    assert kept.layers[-1].activation.__name__ == "softmax"
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    for got, want in zip(kept.get_weights(), student.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_unknown_strategy_is_one_line():
    with pytest.raises(CompressError, match="strategy 'tpu': must be none, mirrored or multiworker"):
        TrainingContext(strategy="tpu")


def _interrupted_at(epoch):
    def stop(e, logs=None):
        if e == epoch:
            raise KeyboardInterrupt

    return keras.callbacks.LambdaCallback(on_epoch_begin=stop)


def _backed_up(ck, model, x, y, **context):
    """Fit 3 epochs in a context backing up to ``ck``, interrupted as epoch 2 begins."""
    with pytest.raises(KeyboardInterrupt), TrainingContext(checkpoint_dir=ck, **context):
        training.fit_model(model, x, y, epochs=3, verbose=0, callbacks=[_interrupted_at(2)])
    assert (ck / "fit1" / "training_metadata.json").exists()


def test_a_backup_of_another_model_is_refused_in_one_line(tmp_path):
    model, x, y = _tiny()
    ck = tmp_path / "ck"
    _backed_up(ck, model, x, y)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    wider.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(CompressError) as refused, TrainingContext(checkpoint_dir=ck):
        training.fit_model(wider, x, y, epochs=3, verbose=0)
    assert str(refused.value) == (f"checkpoint {ck} was made by another command or model; use "
                                  "a new --checkpoint-dir or delete it")
    # the same model with other epochs is another fit too
    with pytest.raises(CompressError, match="made by another command or model"), \
            TrainingContext(checkpoint_dir=ck):
        training.fit_model(model, x, y, epochs=5, verbose=0)
    assert (ck / "fit1" / "training_metadata.json").exists()  # refused, not overwritten


def test_a_fit_folder_holding_the_users_files_is_refused_not_deleted(tmp_path):
    # Keras deletes a fit's backup folder, whole, when the fit ends: a user's ck/fit1/ with
    # files of their own in it went with it (only a fit1/ with our metadata was checked).
    model, x, y = _tiny()
    ck = tmp_path / "ck"
    (ck / "fit1").mkdir(parents=True)
    (ck / "fit1" / "mydata.txt").write_text("mine")
    (ck / "other.txt").write_text("also mine")
    with pytest.raises(CompressError) as refused:
        TrainingContext(checkpoint_dir=ck).__enter__()
    assert str(refused.value) == (
        f"checkpoint {ck}: fit1/ holds files that are not a backup (mydata.txt), and a fit's "
        "backup folder is deleted when the fit ends; use a new --checkpoint-dir or move them")
    assert (ck / "fit1" / "mydata.txt").read_text() == "mine"
    # a backup of ours, left by an interrupted fit, still resumes
    (ck / "fit1" / "mydata.txt").unlink()
    _backed_up(ck, model, x, y)
    with TrainingContext(checkpoint_dir=ck):
        training.fit_model(model, x, y, epochs=3, verbose=0)
    assert (ck / "other.txt").read_text() == "also mine"


def test_changed_options_are_refused_before_any_fit_and_the_same_ones_resume(tmp_path):
    model, x, y = _tiny()
    ck = tmp_path / "ck"
    data = tmp_path / "data.npz"
    data.write_bytes(b"first")
    options = {"sparsity": 0.9, "epochs": 200, "data": f"npz:{data}", "output": "a.keras"}
    _backed_up(ck, model, x, y, command="prune", options=options)
    for changed in ({**options, "sparsity": 0.5}, {**options, "epochs": 16}):
        with pytest.raises(CompressError, match=f"checkpoint {ck} was made by another"):
            TrainingContext(checkpoint_dir=ck, command="prune", options=changed).__enter__()
    with pytest.raises(CompressError, match="made by another command"):
        TrainingContext(checkpoint_dir=ck, command="share", options=options).__enter__()
    # another output path, --force or --json change nothing that is trained: it resumes
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))
    same = {**options, "output": "b.keras", "force": True, "as_json": True}
    with TrainingContext(checkpoint_dir=ck, command="prune", options=same):
        training.fit_model(model, x, y, epochs=3, verbose=0, callbacks=[record])
        # the next fit of the same model runs whole (Keras kept the restored epoch)
        training.fit_model(model, x, y, epochs=2, verbose=0, callbacks=[record])
    assert seen == [2, 0, 1]
    # an input file is compared by its content
    _backed_up(ck, model, x, y, command="prune", options=options)
    data.write_bytes(b"edited")
    with pytest.raises(CompressError, match="made by another command"):
        TrainingContext(checkpoint_dir=ck, command="prune", options=options).__enter__()
