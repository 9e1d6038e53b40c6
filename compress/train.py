"""``train``: (re)train a model on its data, as a recipe step or a baseline.

The recipe step ``train`` and a recipe's ``baseline`` use it; it compiles a copy of the
model for its own task (:mod:`compress.task`: the model's loss, ``loss``/``metrics``
options, else inferred from its output) and fits it on the data's train split (validating
on its val split), with the recipe's callbacks.

Example:

>>> from compress.train import TRAIN_OPTIONS
>>> TRAIN_OPTIONS.validate({"epochs": 2})["optimizer"]
'adam'
>>> trained, info = train(model, ds, epochs=3)            # doctest: +SKIP
"""

from __future__ import annotations

from compress.options import Option, Schema
from compress.passes import Pass
from compress.task import TASK_OPTIONS

TRAIN_OPTIONS = Schema("train", [
    Option("epochs", int, 5, "training epochs", low=0),
    Option("learning_rate", float, 1e-3, "learning rate", low=0.0, low_inclusive=False),
    Option("optimizer", str, "adam", "optimizer", choices=("adam", "sgd", "rmsprop")),
    Option("batch_size", int, 64, "batch size", low=1),
    *TASK_OPTIONS,
])


def train(model, data=None, *, verbose=0, callbacks=None, in_place: bool = False, **options):
    """Train ``model`` on ``data``; return the trained model and ``{"epochs": n}``.

    Args:
        model: a Keras model (not modified unless ``in_place``).
        data: a :class:`compress.data.Dataset` prepared for the model.
        verbose: Keras ``verbose``, default 0.
        callbacks: list of Keras callbacks or None.
        in_place: bool, default False. Train ``model`` itself (a recipe's freshly built
            baseline) instead of a copy.
        **options: see :data:`TRAIN_OPTIONS`.
    """
    from compress import training
    from compress.errors import CompressError

    opts = TRAIN_OPTIONS.validate(options)
    if data is None:
        raise CompressError("train: needs data")
    target = model if in_place else training.copy_model(model)
    from compress.task import resolve, sample_targets

    task = resolve(model, opts["loss"], opts["metrics"], y=sample_targets(data))
    task.compile(target, learning_rate=opts["learning_rate"], optimizer=opts["optimizer"])
    training.fit(target, data, epochs=opts["epochs"], batch_size=opts["batch_size"],
                 callbacks=list(callbacks or []), verbose=verbose)
    return target, {"epochs": opts["epochs"]}


def needs_data(opts: dict) -> list[str]:
    """Training always needs data."""
    return ["training"]


PASS = Pass("train", "train the model on the data (a recipe step)", train, TRAIN_OPTIONS,
            needs_data=needs_data, trains=True, takes_callbacks=True, cli=False, api="",
            order=5)
