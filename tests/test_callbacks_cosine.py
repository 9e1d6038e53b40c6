"""CosineSchedule: per-step rates matching Keras's cosine schedules, warmup, floor, restarts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress.callbacks.cosine import CosineSchedule
from compress.errors import CompressError

N, BATCH = 320, 32  # 10 steps per epoch


def _model(lr=0.1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    return model


class _Record(keras.callbacks.Callback):
    """The optimizer's rate as each batch runs (after the schedule set it)."""

    def on_train_begin(self, logs=None):
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _fit(cosine, epochs, lr=0.1):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 3, N)
    model = _model(lr)
    rec = _Record()
    hist = model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[cosine, rec], verbose=0,
                     shuffle=False)
    return np.array(rec.rates), hist


def test_single_cycle_matches_keras_cosine_decay_with_warmup_every_step():
    cosine = CosineSchedule(peak_lr=0.1, warmup_epochs=1)  # float-compiled optimizer
    rates, hist = _fit(cosine, epochs=5, lr=0.05)
    assert len(rates) == 50
    keras_sched = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=40, warmup_target=0.1, warmup_steps=10)
    expected = np.array([float(keras_sched(s)) for s in range(50)])
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
    assert len(np.unique(np.round(rates[10:20], 8))) == 10  # changes every step, not per epoch
    assert rates[:10].tolist() == sorted(rates[:10]) and rates[0] == 0.0
    # the rate is in the logs: History sees the rate of each epoch's last step
    np.testing.assert_allclose(hist.history["learning_rate"], rates[9::10], rtol=1e-6)


def test_restarts_follow_keras_sgdr_with_period_multiplier_and_floor():
    cosine = CosineSchedule(peak_lr=0.2, period_epochs=1, period_mult=2.0, restart_decay=0.5,
                            floor=0.01)
    rates, _ = _fit(cosine, epochs=7)
    shape = keras.optimizers.schedules.CosineDecayRestarts(1.0, 10, t_mul=2.0, m_mul=0.5,
                                                           alpha=0.0)
    expected = 0.01 + 0.19 * np.array([float(shape(s)) for s in range(70)])
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    # restarts at steps 10 and 30 (periods 10, 20, 40), each peak lower by restart_decay
    jumps = [s for s in range(1, 70) if rates[s] > rates[s - 1] + 1e-6]
    assert jumps == [10, 30]
    assert rates[10] == pytest.approx(0.01 + 0.19 * 0.5)
    assert rates[30] == pytest.approx(0.01 + 0.19 * 0.25)
    assert rates.min() >= 0.01 - 1e-9


def test_peak_defaults_to_the_compiled_rate_and_scale_multiplies_the_curve():
    cosine = CosineSchedule()
    rates, _ = _fit(cosine, epochs=2, lr=0.05)
    assert rates[0] == pytest.approx(0.05)
    assert rates[-1] < 0.05 * 0.01


def test_initial_epoch_resumes_on_the_curve():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 3, N)
    model = _model()
    rec = _Record()
    model.fit(x, y, batch_size=BATCH, epochs=4, initial_epoch=2, verbose=0,
              callbacks=[CosineSchedule(peak_lr=0.1), rec])
    full = CosineSchedule(peak_lr=0.1).schedule(np.arange(40), 10, 40, 0.1)
    np.testing.assert_allclose(rec.rates, full[20:40], rtol=1e-6)


def test_refuses_a_schedule_compiled_optimizer_and_bad_arguments():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
                  "mse")
    with pytest.raises(CompressError, match="LearningRateSchedule"):
        model.fit(np.zeros((8, 4)), np.zeros((8, 3)), verbose=0, callbacks=[CosineSchedule()])
    with pytest.raises(CompressError):
        CosineSchedule(period_epochs=0)
    with pytest.raises(CompressError):
        CosineSchedule(floor=-1)


def test_get_config_round_trip():
    cb = CosineSchedule(peak_lr=0.1, warmup_epochs=0.5, period_epochs=2, period_mult=2,
                        floor=1e-4)
    assert CosineSchedule.from_config(cb.get_config()).get_config() == cb.get_config()


def test_rate_is_read_in_graph_and_the_optimizer_is_restored_after_fit(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 3, N)
    model = _model(0.05)
    variable = model.optimizer._learning_rate
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = type(self.model.optimizer._learning_rate).__name__

    ckpt = tmp_path / "mid.keras"
    cosine = CosineSchedule(peak_lr=0.1)
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
              callbacks=[cosine, Peek(), keras.callbacks.ModelCheckpoint(ckpt)])
    assert set(seen.values()) == {"_InGraphRate"}  # swapped in for the fit only
    assert model.optimizer._learning_rate is variable
    assert "get_config" not in model.optimizer.__dict__
    last = float(cosine.learning_rate)
    assert float(variable.numpy()) == pytest.approx(last)
    # a checkpoint written mid-fit loads with plain Keras, with the rate as a float
    loaded = keras.models.load_model(ckpt)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(last, rel=1e-5)
    # the next fit without the schedule trains at the float variable's rate again
    rec = _Record()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[rec])
    assert rec.rates == pytest.approx([last] * 10)
    before = [w.copy() for w in model.get_weights()]
    variable.assign(0.0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)  # rate 0: the re-traced step reads the variable


def test_a_fit_stopped_by_an_error_leaves_the_next_cosine_fit_working():
    # Keras skips on_train_end when a fit raises: the schedule stayed in the optimizer and
    # the next CosineSchedule refused it as "compiled with a LearningRateSchedule".
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 3, N)
    model = _model(0.05)
    variable = model.optimizer._learning_rate
    boom = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
                  callbacks=[CosineSchedule(peak_lr=0.1), boom])
    assert model.optimizer._learning_rate is not variable  # left in by the error
    rec = _Record()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
              callbacks=[CosineSchedule(peak_lr=0.1), rec])
    assert model.optimizer._learning_rate is variable
    assert rec.rates[0] == pytest.approx(0.1) and rec.rates[-1] < 0.05


def test_staged_fits_start_each_cosine_at_the_compiled_rate_again():
    # peak_lr=None read the rate the last fit's cosine ended at (near its floor), so each
    # stage started where the last ended: 9e-3 -> 2e-6 -> 5e-10. A rate the user sets
    # between fits is still the next peak.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 3, N)
    model = _model(0.05)
    starts = []
    for _ in range(3):
        rec = _Record()
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                  callbacks=[CosineSchedule(), rec])
        starts.append(rec.rates[0])
        assert rec.rates[-1] < 0.01
    assert starts == pytest.approx([0.05] * 3)
    model.optimizer.learning_rate = 0.02
    rec = _Record()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[CosineSchedule(), rec])
    assert rec.rates[0] == pytest.approx(0.02)
