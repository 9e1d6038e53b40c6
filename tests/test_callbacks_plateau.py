"""PlateauSchedule: same rate sequence as Keras's ReduceLROnPlateau, and the cosine rule."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress.callbacks.cosine import CosineSchedule
from compress.callbacks.plateau import PlateauSchedule
from compress.errors import CompressError


def _replay(cb, values, lr=1.0):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(lr), "mse")
    cb.set_model(model)
    cb.on_train_begin()
    rates = []
    for epoch, v in enumerate(values):
        logs = {"val_loss": v}
        cb.on_epoch_end(epoch, logs)
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    return rates


HISTORY = [1.0, 0.9, 0.9, 0.9, 0.9, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, 0.5, 0.5, 0.5,
           0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("kwargs", [
    {"patience": 2}, {"patience": 1, "cooldown": 2}, {"patience": 0, "min_lr": 1e-3},
    {"patience": 2, "factor": 0.5, "min_delta": 0.05}])
def test_same_rate_sequence_as_keras(kwargs):
    ours = _replay(PlateauSchedule(**kwargs), HISTORY)
    theirs = _replay(keras.callbacks.ReduceLROnPlateau(**{"factor": 0.1, **kwargs}), HISTORY)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert min(ours) < 1.0  # the history does trigger reductions


def test_default_factor_divides_by_ten_and_respects_the_floor():
    cb = PlateauSchedule(patience=1, min_lr=0.005)
    rates = _replay(cb, [1.0] * 8, lr=1.0)
    assert rates[:2] == [1.0, pytest.approx(0.1)]
    assert min(rates) == pytest.approx(0.005)
    assert [e for e, _ in cb.reductions] == [1, 2, 3]  # 1 -> 0.1 -> 0.01 -> floor 0.005


def test_with_cosine_it_scales_the_peak_and_the_curve_keeps_its_shape(digits):
    x = digits.x_train.reshape(len(digits.x_train), -1)[:320]
    y = digits.y_train[:320]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    cosine = CosineSchedule(peak_lr=0.1, period_epochs=6)
    # monitoring the training loss with an impossible min_delta: a plateau every 2 epochs
    plateau = PlateauSchedule(monitor="loss", patience=2, min_delta=10.0, min_lr=0.001)
    rates = []
    rec = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: rates.append(
        float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
    model.fit(x, y, batch_size=32, epochs=6, verbose=0, shuffle=False,
              callbacks=[cosine, plateau, rec])
    base = cosine.schedule(np.arange(60), 10, 60, 0.1)
    # epoch 0 sets the best; with patience 2 reductions end epochs 2 and 4 (0-based)
    assert [e for e, _ in plateau.reductions] == [2, 4]
    scale = np.repeat([1.0, 1.0, 1.0, 0.1, 0.1, 0.01], 10)
    np.testing.assert_allclose(rates, base * scale, rtol=1e-5, atol=1e-9)
    assert cosine.scale == pytest.approx(0.01)


def test_refuses_bad_factor_and_config_round_trip():
    with pytest.raises(CompressError):
        PlateauSchedule(factor=1.0)
    cb = PlateauSchedule(monitor="val_accuracy", patience=3, cooldown=1, min_lr=1e-5)
    assert PlateauSchedule.from_config(cb.get_config()).get_config() == cb.get_config()
