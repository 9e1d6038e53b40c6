"""Training callbacks from a recipe mapping: ``{"cosine": {"warmup_epochs": 1}}`` -> callbacks.

Recipe steps (``train``, ``distill``, ``cascade``) and a recipe's ``baseline`` take a
``callbacks:`` mapping; each entry is checked with its schema in :data:`CALLBACK_OPTIONS`.

Example:

>>> from compress.callbacks.from_config import build_callbacks
>>> [type(c).__name__ for c in build_callbacks({"plateau": {"patience": 2}})]
['PlateauSchedule']
"""

from __future__ import annotations

from compress.callbacks.options import CALLBACK_OPTIONS
from compress.errors import CompressError


def build_callbacks(mapping: dict | None, path: str = "callbacks") -> list:
    """Build callbacks from a recipe mapping such as ``{"cosine": {"warmup_epochs": 1}}``.

    Keys are ``early_stopping``, ``cosine`` and ``plateau`` (in that order in the result
    list, whatever the mapping's order); values are option mappings checked with
    :data:`CALLBACK_OPTIONS` (a null value means all defaults).

    Args:
        mapping: dict or None. Callback name to options.
        path: str, default ``"callbacks"``. Prefix for error messages.

    Returns:
        A list of Keras callbacks.
    """
    from compress.callbacks.cosine import CosineSchedule
    from compress.callbacks.early_stopping import EarlyStopping
    from compress.callbacks.plateau import PlateauSchedule

    check_callbacks(mapping, path)
    mapping = mapping or {}
    classes = {"early_stopping": EarlyStopping, "cosine": CosineSchedule,
               "plateau": PlateauSchedule}
    out = []
    for name, schema in CALLBACK_OPTIONS.items():
        if name in mapping:
            opts = schema.validate(mapping[name] or {}, path=f"{path}.{name}")
            out.append(classes[name](**opts))
    return out


def check_callbacks(mapping, path: str = "callbacks") -> None:
    """Check a step's ``callbacks:`` mapping against :data:`CALLBACK_OPTIONS`, as
    :func:`build_callbacks` does before it builds them, but without building them:
    checking a recipe needs no Keras (nor TensorFlow).

    Example:

    >>> from compress.callbacks.from_config import check_callbacks
    >>> check_callbacks({"cosine": {"warmup_epochs": 1}})
    >>> check_callbacks({"cosin": None})
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: callbacks.cosin: unknown callback (known: early_stopping, cosine, plateau)
    """
    mapping = mapping or {}
    if not isinstance(mapping, dict):
        raise CompressError(f"{path}: must be a mapping of callback names to options")
    unknown = [k for k in mapping if k not in CALLBACK_OPTIONS]
    if unknown:
        raise CompressError(f"{path}.{unknown[0]}: unknown callback "
                            f"(known: {', '.join(CALLBACK_OPTIONS)})")
    for name, schema in CALLBACK_OPTIONS.items():
        if name in mapping:
            schema.validate(mapping[name] or {}, path=f"{path}.{name}")
