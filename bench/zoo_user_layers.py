"""A user's module for the zoo's hand-written cases (bench/zoo_models.py): a registered
custom layer and a registered subclassed model.

The zoo loads it the way ``--import bench/zoo_user_layers.py`` does
(:func:`compress.io.import_modules`), never by a Python import: a saved model that uses
these classes loads only after that.

Example:

>>> from compress import io
>>> (user,) = io.import_modules(["bench/zoo_user_layers.py"])   # doctest: +SKIP
>>> user.ChannelGain(name="gain")                               # doctest: +SKIP
"""

import keras

PACKAGE = "zoo_bench"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelGain(keras.layers.Layer):
    """A per-channel gain: a user's custom layer with a weight of its own."""

    def build(self, shape):
        self.gain = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gain


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubNet(keras.Model):
    """A subclassed classifier (its own ``call``): conv, flatten, hidden, softmax head."""

    def __init__(self, classes=4, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.flat = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = keras.layers.Dense(classes, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(self.flat(self.conv(x))))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
