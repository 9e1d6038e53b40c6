"""compress.cascade.costs: the training-memory estimate and the epoch timer."""

from __future__ import annotations

import keras
import numpy as np

from compress.cascade.costs import EpochTimer, training_memory_bytes
from compress.models import build


def test_training_memory_estimate_is_smaller_for_later_stages():
    model = build("cnn4")
    full = training_memory_bytes(model, 64)
    inp = keras.Input((3, 3, 64))
    h = keras.layers.Conv2D(128, 3, padding="same")(inp)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    assert training_memory_bytes(keras.Model(inp, out), 64) < full / 10


def test_epoch_timer_times_each_epoch_and_skips_the_first_in_the_mean():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    timer = EpochTimer()
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), epochs=3, verbose=0,
              callbacks=[timer])
    assert len(timer.seconds) == 3 and all(s > 0 for s in timer.seconds)
    assert timer.per_epoch() == np.mean(timer.seconds[1:])
