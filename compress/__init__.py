"""keras-compress: make trained Keras 3 models small and fast to deploy.

The Python API mirrors the ``compress`` CLI. Heavy modules load on first use, so
``import compress`` is cheap; importing it also registers the toolkit's layers, so
``keras.models.load_model`` reads models that contain them.

Example:

>>> import compress
>>> model = compress.load_model("model.h5")                     # doctest: +SKIP
>>> compress.export_onnx(model, "model.onnx", x=x_test[:256])   # doctest: +SKIP
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# public name -> "module:attribute"; resolved lazily by __getattr__. The passes
# (compress.prune, compress.share, ...) come from the registry, compress.passes.
_API = {
    "CompressError": "compress.errors:CompressError",
    "load_model": "compress.io:load_model",
    "save_model": "compress.io:save_model",
    "load_data": "compress.data:load_data",
    "model_report": "compress.report:model_report",
    "export_onnx": "compress.export:export_onnx",
    "export_tflite": "compress.export:export_tflite",
    "verify": "compress.runtime:verify",
    "hash_model": "compress.sharing:hash_model",
    "cluster_model": "compress.sharing:cluster_model",
    "callbacks": "compress.callbacks",
    "passes": "compress.passes",
    "run_recipe": "compress.recipes:run_recipe",
}


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _API:
        module, _, attr = _API[name].partition(":")
        value = importlib.import_module(module)
        if attr:
            value = getattr(value, attr)
    else:
        from compress import passes

        spec = passes.api_names().get(name)
        if spec is None:
            raise AttributeError(f"module 'compress' has no attribute '{name}'")
        value = spec.resolve()
    globals()[name] = value
    return value


def __dir__():
    from compress import passes

    names = set(globals()) | set(_API) | set(passes.api_names())
    return sorted(names - {"importlib", "sys"})  # each once; not this file's imports


class _RegisterLayersAfterKeras(importlib.abc.MetaPathFinder):
    """Registers the toolkit's layers right after ``keras`` is imported.

    Registration needs Keras, and importing Keras takes seconds; this keeps
    ``import compress`` (and ``compress --help``) fast while still making
    ``keras.models.load_model`` understand ``HashedDense`` and friends.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                from compress.layers import register_layers

                register_layers()
            except Exception:  # noqa: BLE001, S110 - never break the user's own keras import
                pass

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    from compress.layers import register_layers as _register

    _register()
else:
    sys.meta_path.insert(0, _RegisterLayersAfterKeras())
