"""Export to ONNX and TFLite, verified in the real runtime before anything is reported.

:func:`export_artifact` is the export pass: a Keras model in, the artifact's bytes and
its verification out, nothing written; its options are :data:`EXPORT_OPTIONS`, shared
by ``compress export``, the recipe ``export`` step and the keyword arguments. The
writers :func:`export_onnx`, :func:`export_tflite` and :func:`export` are the same
export followed by an atomic write. ONNX goes through Keras's own
``model.export(format="onnx")`` (``tf2onnx.convert.from_keras`` fails on Keras 3
models); TFLite through ``model.export(format="litert")``. Running and measuring
artifacts is :mod:`compress.runtime`.

Example:

>>> from compress.export import export_artifact, export_onnx
>>> content, check = export_artifact(model, data, format="tflite")   # doctest: +SKIP
>>> check = export_onnx(model, "model.onnx", x=x_test[:256])         # doctest: +SKIP
>>> check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0   # doctest: +SKIP
True
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compress import io
from compress.errors import CompressError
from compress.options import Option, Schema
from compress.passes import Pass
from compress.quiet import quiet_output
from compress.runtime import refuse_keras_quantized, verify

FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}

EXPORT_OPTIONS = Schema("export", [
    Option("format", str, None, "target format; default from the output suffix (.onnx or "
           ".tflite), onnx where there is none", choices=("onnx", "tflite")),
    Option("samples", int, 256, "inputs to verify the artifact on (the data's test split, "
           "else seeded random inputs)", low=1),
    Option("atol", float, 1e-4, "largest allowed absolute output difference between Keras "
           "and the runtime", low=0.0),
    Option("seed", int, 0, "seed of the random verification inputs (without data)",
           cli=False),
])


def export_artifact(model, data=None, *, verbose=0, **options) -> tuple[bytes, dict]:
    """Export ``model`` to ONNX or TFLite bytes, verified in the runtime; write nothing.

    The artifact runs in onnxruntime or LiteRT on :func:`verification_inputs` (the
    data's test split, else seeded random inputs) and must agree with Keras: a max
    absolute difference within ``atol`` and top-1 agreement of 100%.

    Example:

    >>> content, check = export_artifact(model, data, format="onnx")   # doctest: +SKIP
    >>> check["format"], check["bytes"] == len(content)                # doctest: +SKIP
    ('onnx', True)

    Args:
        model: a single-input Keras model (not modified).
        data: a :class:`compress.data.Dataset` prepared for the model, or None.
        **options: see ``EXPORT_OPTIONS``: ``format=None`` (onnx), ``samples=256``,
            ``atol=1e-4``, ``seed=0``.

    Returns:
        ``(content, info)``: the artifact's bytes, and ``format``, ``bytes`` plus the
        verification of :func:`compress.runtime.verify`.

    Raises:
        CompressError: bad options, a failed export, a disagreement beyond ``atol``.
    """
    opts = EXPORT_OPTIONS.validate(options)
    fmt = opts["format"] or "onnx"
    x = verification_inputs(model, data, opts["samples"], opts["seed"])
    content, check = _exported(model, fmt, x, opts["atol"], where=f"model '{model.name}'")
    return content, {"format": fmt, "bytes": len(content), **check}


def _suffix(options: dict) -> str:
    return FORMATS[options.get("format") or "onnx"]


PASS = Pass("export", "ONNX or TFLite, verified against Keras in onnxruntime / LiteRT",
            "compress.export:export_artifact", EXPORT_OPTIONS, produces="artifact",
            suffix=_suffix, api="export_artifact", order=10)


def verification_inputs(model, data=None, samples: int = 256, seed: int = 0) -> np.ndarray:
    """The inputs an artifact is verified on: the first ``samples`` of the data's test
    split, or, without data, ``samples`` seeded uniform random inputs in [0, 1).

    Example:

    >>> verification_inputs(model, None, samples=8).shape   # doctest: +SKIP
    (8, 28, 28, 1)
    """
    if data is not None:
        from compress.data import fit_to_model

        return fit_to_model(np.asarray(data.x_test[:samples]), model, "test data")
    shape = tuple(d or 1 for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((samples,) + shape, dtype=np.float32)


def format_for(path, options: dict | None = None) -> str:
    """The export format of ``options`` (``format``), else of ``path``'s suffix.

    Example:

    >>> format_for("m.tflite"), format_for("m.bin", {"format": "onnx"})
    ('tflite', 'onnx')
    """
    fmt = (options or {}).get("format")
    if fmt is None and path is not None:
        fmt = {v: k for k, v in FORMATS.items()}.get(Path(path).suffix.lower())
        if fmt is None:
            raise CompressError(f"{path}: cannot tell the format; pass --format or use "
                                ".onnx/.tflite")
    return fmt or "onnx"


def export_onnx(model, path, x: np.ndarray | None = None, force: bool = False,
                inputs: tuple = (), atol: float = 1e-4, opset: int | None = None) -> dict:
    """Export ``model`` to ONNX at ``path`` and verify it in onnxruntime.

    Args:
        model: a Keras model.
        path: output ``.onnx`` file (refused if it exists, unless ``force``).
        x: inputs to verify on (recommended: 256 real samples); None skips the check.
        force: bool, default False. Overwrite an existing file.
        inputs: files that must never be overwritten (the input model).
        atol: float, default 1e-4. Largest allowed absolute difference of outputs.
        opset: ONNX opset, default Keras's choice.

    Returns:
        The verification dict of :func:`compress.runtime.verify` plus ``path`` and
        ``bytes``.
    """
    return _write(model, path, "onnx", x, force, inputs, atol, opset)


def export_tflite(model, path, x: np.ndarray | None = None, force: bool = False,
                  inputs: tuple = (), atol: float = 1e-4) -> dict:
    """Export ``model`` to a float32 TFLite flatbuffer and verify it in LiteRT.

    Same arguments and result as :func:`export_onnx`; quantized variants are in
    :mod:`compress.quantization`.
    """
    return _write(model, path, "tflite", x, force, inputs, atol)


def export(model, path, fmt: str | None = None, **kwargs) -> dict:
    """Export to the format named by ``fmt`` or by the suffix of ``path``."""
    fmt = fmt or {v: k for k, v in FORMATS.items()}.get(Path(path).suffix.lower())
    if fmt == "onnx":
        return export_onnx(model, path, **kwargs)
    if fmt == "tflite":
        return export_tflite(model, path, **kwargs)
    raise CompressError(f"{path}: unknown export format (use .onnx or .tflite)")


def _write(model, path, fmt: str, x, force: bool, inputs, atol: float,
           opset: int | None = None) -> dict:
    """Check the output first, export and verify in memory, then write atomically."""
    out = io.check_output(path, inputs=inputs, force=force, suffixes=(FORMATS[fmt],))
    content, check = _exported(model, fmt, x, atol, where=str(out), opset=opset)
    io.write_bytes(out, content)
    return {"path": str(out), "bytes": len(content), **check}


def _exported(model, fmt: str, x, atol: float, where: str, opset: int | None = None
              ) -> tuple[bytes, dict]:
    """The artifact's bytes and its verification on ``x`` (None skips it)."""
    from compress.training import check_finite

    check_finite(model)
    if fmt == "tflite":
        refuse_keras_quantized(model)
    _ensure_called(model)
    kwargs = {"opset_version": opset} if opset and fmt == "onnx" else {}
    keras_format = {"onnx": "onnx", "tflite": "litert"}[fmt]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / f"model{FORMATS[fmt]}"
        try:
            with quiet_output():
                model.export(str(tmp), format=keras_format, verbose=False, **kwargs)
        except Exception as exc:
            name = {"onnx": "ONNX", "tflite": "TFLite"}[fmt]
            raise CompressError(f"{where}: {name} export failed ({_one_line(exc)})") from exc
        content = tmp.read_bytes()
    return content, _verified(model, content, fmt, x, atol, where)


def _ensure_called(model) -> None:
    """Keras refuses to export a freshly loaded model that was never called; call it once."""
    shape = tuple(d or 1 for d in model.inputs[0].shape[1:])
    model(np.zeros((1,) + shape, dtype=model.inputs[0].dtype or "float32"), training=False)


def _verified(model, content: bytes, fmt: str, x, atol: float, where: str) -> dict:
    if x is None:
        return {}
    check = verify(model, content, x, fmt=fmt)
    if check["max_abs_diff"] > atol or check["top1_agreement"] < 1.0:
        raise CompressError(
            f"{where}: exported model disagrees with Keras (max abs diff "
            f"{check['max_abs_diff']:.2e} > {atol:.0e} or top-1 agreement "
            f"{check['top1_agreement']:.2%} < 100%); nothing written")
    return check


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
