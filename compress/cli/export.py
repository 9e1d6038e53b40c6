"""``compress export MODEL --format onnx|tflite -o OUT``: export and verify."""

import click

from compress.cli.common import (
    data_option,
    emit,
    force_option,
    json_option,
    model_argument,
    output_option,
    seed_option,
    unsafe_option,
)


@click.command("export")
@model_argument
@click.option("--format", "fmt", type=click.Choice(["onnx", "tflite"]), default=None,
              help="Target format; default from the output suffix (.onnx or .tflite).")
@output_option
@data_option
@click.option("--samples", default=256, show_default=True, type=click.IntRange(1),
              help="Inputs to verify the artifact on (real data with --data, else random).")
@click.option("--atol", default=1e-4, show_default=True, type=click.FloatRange(min=0),
              help="Largest allowed absolute output difference between Keras and the runtime.")
@click.option("--quantize", "quantize", type=click.Choice(["int8", "dynamic", "float16"]),
              default=None, help="Quantize while exporting (as `compress quantize --mode`); "
              "int8 needs --data for calibration.")
@click.option("--sparse", is_flag=True, default=False,
              help="With --quantize, TFLite: store mostly-zero (pruned) weight tensors in "
              "TFLite's sparse format (as `compress quantize --sparse`): a smaller raw file, "
              "not a smaller zipped one; runs on LiteRT's builtin kernels (slower).")
@seed_option
@unsafe_option
@json_option
@force_option
def command(model, fmt, output, data, samples, atol, seed, unsafe, as_json, force,
            quantize=None, sparse=False):
    """Export MODEL to ONNX or TFLite, then run the file in onnxruntime / LiteRT and
    compare its outputs with Keras (max abs diff and top-1 agreement). A disagreement
    beyond --atol is an error and nothing is written.

    \b
    Examples:
      compress export model.keras -o model.onnx --data mnist5k
      compress export model.h5 --format tflite -o model.tflite
      compress export model.keras -o model.tflite --quantize int8 --data mnist5k
      compress export pruned.keras -o pruned.tflite --quantize int8 --sparse --data mnist5k
    """
    from pathlib import Path

    import numpy as np

    from compress import export, io
    from compress.cli.common import load_inputs
    from compress.errors import CompressError

    suffix = Path(output).suffix.lower()
    fmt = fmt or {".onnx": "onnx", ".tflite": "tflite"}.get(suffix)
    if fmt is None:
        raise CompressError(f"{output}: cannot tell the format; pass --format or use "
                            ".onnx/.tflite")
    if sparse and not quantize:
        raise CompressError("--sparse is a storage option of the quantized TFLite file; add "
                            "--quantize int8|dynamic|float16 (or use `compress quantize "
                            "--sparse`)")
    if quantize:
        from compress.cli.quantize import emit_result, run_quantize

        try:
            result = run_quantize(model, output, data, seed, unsafe, force,
                                  {"mode": quantize, "format": fmt, "sparse": sparse})
        except CompressError as exc:  # its hints name quantize's flag; this command's is --quantize
            raise CompressError(str(exc).replace("--mode ", "--quantize ")) from exc
        emit_result(result, as_json)
        return
    io.check_output(output, inputs=[model], force=force, suffixes=(export.FORMATS[fmt],))
    loaded, dataset = load_inputs(model, data, seed, unsafe)
    if dataset is not None:
        x = dataset.x_test[:samples]
    else:
        shape = tuple(loaded.inputs[0].shape[1:])
        x = np.random.default_rng(seed).random((samples,) + shape, dtype=np.float32)
    result = export.export(loaded, output, fmt=fmt, x=x, force=force, inputs=[model], atol=atol)
    result["format"] = fmt
    verified = (f"verified on {result['samples']} inputs: max abs diff "
                f"{result['max_abs_diff']:.2e}, top-1 agreement {result['top1_agreement']:.2%}")
    emit(result, as_json, lines=[f"wrote {result['path']} ({result['bytes']:,} bytes, {fmt})",
                                 verified])
