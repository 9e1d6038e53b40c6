"""Shared test builders: the source of a user's module with one registered subclassed
``keras.Model``, written to a file for ``--import`` and run in-process to build the model.

Several tests need a subclassed classifier whose class lives in a *file* (the CLI's
``--import FILE.py``), each registered under a package of its own so the tests do not
see each other's classes. This is the one place that writes that module.

Example:

>>> source = subclassed_source("demo_test", "TinyNet", classes=10, hidden=16)
>>> "class TinyNet(keras.Model)" in source and 'package="demo_test"' in source
True
"""

from __future__ import annotations

import textwrap

_TEMPLATE = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="{package}")
    class {name}(keras.Model):
        def __init__(self, classes={classes}, **kwargs):
            super().__init__(**kwargs)
            self.classes = classes
    {conv_init}        self.flat = keras.layers.Flatten()
            self.hidden = keras.layers.Dense({hidden}, activation="relu")
            self.head = keras.layers.Dense(classes, activation="softmax")

        def call(self, x):
            return self.head(self.hidden(self.flat({call_input})))

        def get_config(self):
            return {{**super().get_config(), "classes": self.classes}}
''')


def subclassed_source(package: str, name: str, *, classes: int, hidden: int,
                      conv: bool = False) -> str:
    """A module's source: ``name`` registered as ``package>name``; flatten, a ReLU Dense of
    ``hidden`` units and a softmax head, after a ``Conv2D(4, 3)`` when ``conv``."""
    return _TEMPLATE.format(
        package=package, name=name, classes=classes, hidden=hidden,
        conv_init=('        self.conv = keras.layers.Conv2D(4, 3, activation="relu")\n'
                   if conv else ""),
        call_input="self.conv(x)" if conv else "x")


def load_source(source: str, module) -> dict:
    """Write ``source`` to ``module`` (a path) and run it: its namespace, classes registered.

    The caller pops the registered key from ``keras.saving.get_custom_objects()`` when done,
    so that a saved model needs ``--import`` again.
    """
    module.write_text(source)
    namespace: dict = {}
    exec(compile(source, str(module), "exec"), namespace)  # noqa: S102 - our own test code
    return namespace


def attention_classifier():
    """``(model, x, y)``: a ``MultiHeadAttention(2 heads, key_dim 4)`` layer named "mha" on
    6 positions of 8 features, average pooling and a 3-class softmax head "head"; 32
    random samples and labels. Seeded: the same weights and data on every call."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8))
    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    h = keras.layers.GlobalAveragePooling1D()(mha(inp, inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(h))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 8)).astype("float32")
    return model, x, rng.integers(0, 3, 32)
