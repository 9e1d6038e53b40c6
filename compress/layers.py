"""Keras layers as the toolkit sees them: its own serializable layers, and choosing a
model's layers by name.

Each module listed in ``LAYER_MODULES`` defines layers decorated with
``@keras.saving.register_keras_serializable(package="compress")``; importing it is
enough. ``compress.io.load_model`` calls :func:`register_layers` before loading, and a
user calling plain ``keras.models.load_model`` needs only ``import compress`` first.

Every pass with a ``layers`` option picks layers with :func:`select_layers`, by one rule
(:data:`LAYERS_OPTION`): an entry selects the layers whose name it equals, whose class
name it equals (``Dense``), or whose whole name it matches as a regular expression
(``fc.*`` selects ``fc1`` and ``fc2``; ``fc`` alone selects neither).

Example:

>>> class Layer:
...     def __init__(self, name): self.name = name
>>> [la.name for la in select_layers([Layer("fc1"), Layer("fc2"), Layer("out")],
...                                  ["fc.*"], "prunable")]
['fc1', 'fc2']
>>> select_layers([Layer("fc1")], ["fc"], "prunable")
Traceback (most recent call last):
...
compress.errors.CompressError: layers 'fc': matches no prunable layer (prunable: fc1)
"""

from __future__ import annotations

import importlib
import re

from compress.errors import CompressError
from compress.options import Option

LAYER_MODULES: tuple = (
    "compress.sharing.hashed_layers",
    "compress.losses",  # not a layer: a loss a compiled model may carry
)

#: The ``layers`` option of every pass that takes one (prune, share, the Pruning callback).
LAYERS_OPTION = Option(
    "layers", list, None,
    "layers to act on (default: every eligible layer), comma-separated: each a layer name, "
    "a class name or a regular expression matching the whole layer name ('fc.*'); a "
    "regular expression cannot contain a comma (give several entries instead)",
    flag="--layers")


def register_layers() -> None:
    """Import every module that defines a toolkit layer (idempotent)."""
    for name in LAYER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):  # a real missing dependency
                raise


def layer_matches(layer, selector: str) -> bool:
    """Whether ``selector`` (a name, a class name or a regular expression matching the
    whole name) selects ``layer``.

    Raises:
        CompressError: when ``selector`` is no layer's name and not a valid regular
            expression.
    """
    if layer.name == selector or type(layer).__name__ == selector:
        return True
    return _pattern(selector).fullmatch(layer.name) is not None


def select_layers(layers: list, selectors: list | None, what: str,
                  model_name: str | None = None, names: list | None = None) -> list:
    """The layers of ``layers`` chosen by ``selectors``, in their order (all when None).

    Args:
        layers: the eligible Keras layers, in model order.
        selectors: list of str or None; see :func:`layer_matches`. A single string is
            one selector.
        what: the adjective naming the eligible layers in errors (``"prunable"``).
        model_name: str or None, the model named in errors.
        names: list of str or None, one per layer: another name each layer answers to
            as well (the ``parent/name`` path of a layer nested in a custom layer, see
            :func:`compress.pruning.masks.layer_path`), matched like its name and listed
            in errors instead of it.

    Raises:
        CompressError: an invalid regular expression, or a selector matching none of
            ``layers``.
    """
    if not selectors:
        return list(layers)
    if isinstance(selectors, str):
        selectors = [selectors]
    names = [la.name for la in layers] if names is None else list(names)
    chosen = set()
    for sel in selectors:
        hits = [id(la) for la, n in zip(layers, names, strict=True) if layer_matches(la, sel)
                or n == sel or _pattern(sel).fullmatch(n) is not None]
        if not hits:
            where = f" of model '{model_name}'" if model_name else ""
            raise CompressError(f"layers '{sel}': matches no {what} layer{where} ({what}: "
                                f"{', '.join(names) or 'none'})")
        chosen.update(hits)
    return [la for la in layers if id(la) in chosen]


def _pattern(selector: str):
    try:
        return re.compile(selector)
    except re.error as exc:
        raise CompressError(f"layers '{selector}': not a valid regular expression "
                            f"({exc})") from None
