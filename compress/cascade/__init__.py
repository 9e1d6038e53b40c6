"""Deep Cascade Learning (Marquez, Hare and Niranjan, 2018): train a network block by block.

A training pass, not a callback: :func:`cascade_train` (and :class:`CascadeTraining`, the
same with its options held) trains each block with a temporary output block, freezes it
and trains the next on its cached outputs.

- ``compress.cascade.cascade_pass``: :func:`cascade_train`, :class:`CascadeTraining`,
  :func:`stage_epochs`.
- ``compress.cascade.blocks``: :func:`chain_layers`, :func:`split_blocks` (a model's
  blocks and head).
- ``compress.cascade.costs``: :func:`training_memory_bytes`, :class:`EpochTimer`.
- ``compress.cascade.options``: :data:`CASCADE_OPTIONS`.

Names load lazily, so ``import compress.cascade`` (the CLI does, for the options) does not
import Keras.

Example:

>>> from compress.cascade import cascade_train                           # doctest: +SKIP
>>> model, info = cascade_train(build("cnn4"), "animals", epochs=2, k=1)  # doctest: +SKIP
"""

import importlib

_WHERE = {
    "CASCADE_OPTIONS": "compress.cascade.options",
    "CascadeTraining": "compress.cascade.cascade_pass",
    "cascade_train": "compress.cascade.cascade_pass",
    "stage_epochs": "compress.cascade.cascade_pass",
    "chain_layers": "compress.cascade.blocks",
    "split_blocks": "compress.cascade.blocks",
    "EpochTimer": "compress.cascade.costs",
    "training_memory_bytes": "compress.cascade.costs",
}

__all__ = [
    "CASCADE_OPTIONS",
    "CascadeTraining",
    "EpochTimer",
    "cascade_train",
    "chain_layers",
    "split_blocks",
    "stage_epochs",
    "training_memory_bytes",
]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'compress.cascade' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
