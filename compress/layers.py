"""Registration of the toolkit's own Keras layers, so saved models load by name.

Each module listed in ``LAYER_MODULES`` defines layers decorated with
``@keras.saving.register_keras_serializable(package="compress")``; importing it is
enough. ``compress.io.load_model`` calls :func:`register_layers` before loading, and a
user calling plain ``keras.models.load_model`` needs only ``import compress`` first.
"""

import importlib

LAYER_MODULES: tuple = (
    "compress.sharing.hashing",
)


def register_layers() -> None:
    """Import every module that defines a toolkit layer (idempotent)."""
    for name in LAYER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):  # a real missing dependency
                raise
