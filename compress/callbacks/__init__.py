"""Keras callbacks that drop into any ``model.fit(..., callbacks=[...])``.

Names load lazily so ``import compress.callbacks`` stays cheap.

Example:

>>> from compress.callbacks import EarlyStopping, CosineSchedule, Pruning   # doctest: +SKIP
>>> model.fit(x, y, callbacks=[EarlyStopping(patience=5), Pruning(sparsity=0.9)])  # doctest: +SKIP
"""

import importlib

_NAMES = {
    "Pruning": "compress.callbacks.pruning",
    "EarlyStopping": "compress.callbacks.early_stopping",
    "retrain_on_all_data": "compress.callbacks.early_stopping",
    "CosineSchedule": "compress.callbacks.cosine",
    "PlateauSchedule": "compress.callbacks.plateau",
}


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'compress.callbacks' has no attribute '{name}'")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_NAMES))
