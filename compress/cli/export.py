"""``compress export MODEL --format onnx|tflite -o OUT``: export and verify."""

import click

from compress.cli.common import (
    data_option,
    emit,
    force_option,
    json_option,
    model_argument,
    output_option,
    provider_option,
    seed_option,
    unsafe_option,
)
from compress.export import EXPORT_OPTIONS


@click.command("export")
@model_argument
@output_option
@data_option
@EXPORT_OPTIONS.click_options()
@click.option("--quantize", "quantize", type=click.Choice(["int8", "dynamic", "float16"]),
              default=None, help="Quantize while exporting (as `compress quantize --mode`); "
              "int8 needs --data for calibration.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              help="fp16: float16 weights and compute with float32 inputs and outputs (the "
              "form GPUs run; ONNX through onnxruntime's float16 converter, TFLite float16 "
              "weights); the same as --quantize float16.")
@click.option("--sparse", is_flag=True, default=False,
              help="With --quantize, TFLite: store mostly-zero (pruned) weight tensors in "
              "TFLite's sparse format (as `compress quantize --sparse`): a smaller raw file, "
              "not a smaller zipped one; runs on LiteRT's builtin kernels (slower).")
@provider_option
@seed_option
@unsafe_option
@json_option
@force_option
def command(model, output, data, seed, unsafe, as_json, force, quantize=None, sparse=False,
            precision="fp32", **options):
    """Export MODEL to ONNX or TFLite, then run the file in onnxruntime / LiteRT and
    compare its outputs with Keras (max abs diff and top-1 agreement), output by output
    for a model with several. Parity is relative to each output's scale: an output
    passes when max|runtime - Keras| <= atol * max(1, max|Keras output|), so --atol is
    absolute for outputs within [-1, 1] (probabilities) and relative beyond (large
    logits, regressions). An output beyond it passes only when it meets the same rule
    against a float64 copy of the model (Keras's own float32 rounding on deep networks;
    the report says so). Any other disagreement is an error and nothing is written.
    Subclassed models get their input shape from --data or --input-shape.

    \b
    Examples:
      compress export model.keras -o model.onnx --data mnist5k
      compress export model.h5 --format tflite -o model.tflite
      compress export model.keras -o model.tflite --quantize int8 --data mnist5k
      compress export model.keras -o model-fp16.onnx --precision fp16
      compress export pruned.keras -o pruned.tflite --quantize int8 --sparse --data mnist5k
      compress export text.keras -o text.onnx --data npz:reviews.npz --without-lookups
    """
    from compress import export, io
    from compress.cli.common import load_inputs
    from compress.errors import CompressError

    fmt = export.format_for(output, options)
    if precision == "fp16":
        if quantize not in (None, "float16"):
            raise CompressError(f"--precision fp16 and --quantize {quantize} ask for two "
                                "different artifacts; give one of them")
        quantize = "float16"
    if sparse and not quantize:
        raise CompressError("--sparse is a storage option of the quantized TFLite file; add "
                            "--quantize int8|dynamic|float16 (or use `compress quantize "
                            "--sparse`)")
    if quantize:
        from compress.cli.quantize import emit_result, run_quantize

        result = run_quantize(model, output, data, seed, unsafe, force,
                              {"mode": quantize, "format": fmt, "sparse": sparse,
                               "without_lookups": options.get("without_lookups", False)})
        emit_result(result, as_json)
        return
    opts = EXPORT_OPTIONS.from_cli({**options, "format": fmt, "seed": seed})
    out = io.check_output(output, inputs=[model], force=force, suffixes=(export.FORMATS[fmt],))
    loaded, dataset = load_inputs(model, data, seed, unsafe, echo_note=False)
    content, info = export.export_artifact(loaded, dataset, **opts)
    io.write_bytes(out, content)
    result = {"path": str(out), **info}
    inputs = "inputs"
    if dataset is None:  # seeded noise: a weaker check than the data's, said as such
        result["random_check_inputs"] = True
        inputs = "random inputs (no --data)"
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("compress_input_note"):  # a wrapped subclassed model
        from compress.cli.quantize import input_note

        note = input_note(loaded, {"format": fmt, "export_copy": info.get("export_copy")})
        if note:
            result["input_note"] = note
    agreement = (f"top-1 agreement {result['top1_agreement']:.2%}"
                 if "top1_agreement" in result else f"SQNR {result['sqnr_db']:.1f} dB")
    verified = (f"verified on {result['samples']} {inputs}: max abs diff "
                f"{result['max_abs_diff']:.2e} (output scale "
                f"{result.get('max_abs_output', 0.0):.3g}, tolerance "
                f"{result.get('tolerance', 0.0):.2e}), {agreement}")
    lines = [f"wrote {result['path']} ({result['bytes']:,} bytes, {fmt})"]
    if result.get("outputs"):  # several outputs: parity per output
        lines.append(f"verified on {result['samples']} {inputs}, per output:")
        for name, one in result["outputs"].items():
            extra = (f", top-1 agreement {one['top1_agreement']:.2%}"
                     if "top1_agreement" in one else f", SQNR {one['sqnr_db']:.1f} dB")
            lines.append(f"  {name}: max abs diff {one['max_abs_diff']:.2e} (output scale "
                         f"{one['max_abs_output']:.3g}, tolerance {one['tolerance']:.2e})"
                         f"{extra}")
    else:
        lines.append(verified)
    from compress.agreement import constant_note, xnnpack_note

    same = constant_note(result, result.get("samples", 0), f"model '{loaded.name}'",
                         random=dataset is None)
    if same:
        lines.append(f"warning: {same}")
    if xnnpack_note(result):
        lines.append(f"note: {xnnpack_note(result)}")
    if result.get("export_copy"):  # the artifact was made from a converter-friendly copy
        lines.append(f"note: {result['export_copy']}")
    if result.get("lookups_note"):  # --without-lookups
        lines.append(f"note: {result['lookups_note']}")
    if result.get("input_note"):
        lines.append(f"note: {result['input_note']}")
    if result.get("input_size_note"):
        lines.append(f"note: {result['input_size_note']}")
    emit(result, as_json, lines=lines)
