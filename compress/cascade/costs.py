"""What training a model costs: estimated memory of one step, and seconds per epoch.

The cascade pass reports both for each stage and for end-to-end training; the benchmark
uses them for plain training too.

Example:

>>> from compress.cascade.costs import training_memory_bytes
>>> from compress.models import build
>>> training_memory_bytes(build("lenet300"), batch_size=64) > 0
True
"""

from __future__ import annotations

import time

import keras
import numpy as np


def training_memory_bytes(model, batch_size: int, optimizer_slots: int = 2) -> int:
    """Estimated peak memory of one training step of ``model`` (float32).

    Activations kept for the backward pass (every layer's output, for one batch, plus the
    input batch), trainable weights with their gradients and ``optimizer_slots`` moment
    buffers each (2 for Adam), and non-trainable weights.
    """
    acts = int(np.prod(model.inputs[0].shape[1:]))
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out = layer.output
        acts += int(np.prod(out.shape[1:]))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return 4 * (batch_size * acts + trainable * (2 + optimizer_slots) + frozen)


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch of a fit; :meth:`per_epoch` leaves out the first (tracing).

    Example:

    >>> timer = EpochTimer()
    >>> model.fit(x, y, epochs=3, callbacks=[timer])    # doctest: +SKIP
    >>> timer.per_epoch()                                # doctest: +SKIP
    0.41
    """

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)

    def per_epoch(self) -> float:
        # the first epoch includes graph tracing; leave it out when there are others
        s = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return float(np.mean(s)) if s else 0.0
