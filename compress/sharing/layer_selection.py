"""Which layers of a model a sharing pass rewrites, and the report rows it returns."""

from __future__ import annotations

import re

import keras

from compress.errors import CompressError

SHAREABLE = (keras.layers.Dense, keras.layers.Conv2D)


def select_layers(model, pattern: str | None, what: str) -> list:
    """Top-level Dense/Conv2D layers whose name matches ``pattern`` (all when None).

    A pattern that matches a weighted layer which cannot be shared, or no shareable layer
    at all, raises :class:`CompressError`.
    """
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise CompressError(f"layers: invalid regular expression {pattern!r} ({exc})") from None
    chosen = []
    for layer in model.layers:
        if regex is not None and not regex.search(layer.name):
            continue
        if _shareable(layer):
            chosen.append(layer)
        elif regex is not None and layer.weights:
            raise CompressError(f"layer '{layer.name}' ({type(layer).__name__}) cannot be "
                                f"{what}: only Dense and channels-last, ungrouped Conv2D can")
    if not chosen:
        raise CompressError(f"no layer to be {what}" + (f" matches --layers {pattern!r}"
                                                        if pattern else " in the model"))
    return chosen


def _shareable(layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    if type(layer) is keras.layers.Conv2D:
        return layer.groups == 1 and layer.data_format == "channels_last"
    return False


def finetune(model, data, epochs: int, learning_rate: float, batch_size: int,
             verbose) -> None:
    """Fine-tune ``model`` in place on ``data`` (a pass's own new model only), for at most
    ``epochs`` epochs, keeping the weights of the best validation loss (patience 5)."""
    import keras

    from compress import training

    if epochs <= 0:
        return
    if data is None:
        raise CompressError("fine-tuning (epochs > 0) needs data (--data NAME)")
    training.compile_classifier(model, learning_rate=learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    training.fit(model, data, epochs=epochs, batch_size=batch_size, callbacks=[stop],
                 verbose=verbose)
