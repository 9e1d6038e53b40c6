"""The toolkit's own Keras losses (serializable, so that a model compiled with one saves and
loads): :class:`OnClassNumbers`, a one-hot loss fed class numbers.

Importing this module registers them (``compress.io.load_model`` does it through
:func:`compress.layers.register_layers`).

Example:

>>> import numpy as np
>>> loss = OnClassNumbers("categorical_crossentropy")
>>> round(float(loss(np.array([1]), np.array([[0.25, 0.75]]))), 4)  # -log 0.75
0.2877
>>> round(float(loss(np.array([[0.0, 1.0]]), np.array([[0.25, 0.75]]))), 4)  # rows too
0.2877
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="compress")
class OnClassNumbers(keras.losses.Loss):
    """A Keras loss on one-hot rows (``categorical_crossentropy``, its focal form,
    ``categorical_hinge``) taking class numbers: each label becomes a one-hot row as wide
    as the output, then the loss runs with the keyword arguments it was compiled with
    (``from_logits``, ``label_smoothing``, focal ``alpha``/``gamma``). Targets that are
    one-hot rows already go to the loss as they are.

    Args:
        loss: a Keras loss name, a built-in loss object or function on one-hot rows.
        fn_kwargs: dict or None. Keyword arguments of the loss function (taken from
            ``loss`` when it is an object).
        name: str or None. Default: the loss's own name.
    """

    def __init__(self, loss="categorical_crossentropy", fn_kwargs=None, name=None,
                 **kwargs):
        fn, own = _function(loss)
        super().__init__(name=name or getattr(fn, "__name__", "loss"), **kwargs)
        self.fn = fn
        self.fn_kwargs = dict(own if fn_kwargs is None else fn_kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            if y_true.shape[-1] != 1:  # one-hot rows already: the loss as compiled
                return self.fn(ops.cast(y_true, y_pred.dtype), y_pred, **self.fn_kwargs)
            y_true = ops.squeeze(y_true, -1)
        rows = ops.one_hot(ops.cast(y_true, "int32"), y_pred.shape[-1], dtype=y_pred.dtype)
        return self.fn(rows, y_pred, **self.fn_kwargs)

    def get_config(self):
        return {**super().get_config(), "loss": self.fn.__name__,
                "fn_kwargs": dict(self.fn_kwargs)}


def _function(loss):
    """``(function, its keyword arguments)`` of a Keras loss name, object or function."""
    if isinstance(loss, str):
        return keras.losses.get(loss), {}
    if isinstance(loss, keras.losses.Loss) and callable(getattr(loss, "fn", None)):
        return loss.fn, dict(getattr(loss, "_fn_kwargs", None) or {})
    return loss, {}
