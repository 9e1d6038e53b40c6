"""``compress quantize MODEL -o OUT.tflite|OUT.onnx|OUT.keras --mode ...``: 8-bit artifacts."""

import click

from compress.cli.common import (
    common_options,
    model_argument,
    output_option,
    provider_option,
)
from compress.quantization import QUANTIZE_OPTIONS


@click.command("quantize")
@model_argument
@output_option
@QUANTIZE_OPTIONS.click_options()
@click.option("--per-tensor", "per_tensor", is_flag=True, default=False,
              help="one weight scale per tensor (the same as --no-per-channel): the fast "
                   "int8 path of many NPUs/DSPs; see --equalize and --bias-correction")
@provider_option
@common_options
def command(model, output, data, seed, unsafe, as_json, force, **options):
    """Quantize MODEL to int8 (or float16) for deployment, run the result in its runtime
    (LiteRT, onnxruntime, Keras) and report accuracy, file size (raw and zipped) and
    batch-1 latency next to the float model in the same runtime.

    Full-integer int8 (the default) and --qat need --data: calibration samples come from
    its training split, accuracy from its test split. Nothing is written on error.

    \b
    Examples:
      compress quantize model.keras -o model.tflite --data mnist5k
      compress quantize model.keras -o model.onnx --data mnist5k --calibration entropy
      compress quantize model.h5 -o model.tflite --mode dynamic
      compress quantize model.keras -o model.tflite --data animals --qat --epochs 3
      compress quantize model.keras -o model.tflite --data animals --per-tensor \\
          --equalize --bias-correction --debug-layers
      compress quantize model.keras -o model-int8.keras --mode keras-int8 --data mnist5k
      compress quantize model.keras -o model-gptq.keras --mode gptq --data mnist5k
      compress quantize model.keras -o model.tflite --data mnist5k --rounding gptq
      compress quantize model.keras -o model-int4.onnx --data mnist5k --mode int4 --rounding gptq
      compress quantize text.keras -o text.tflite --data npz:reviews.npz --without-lookups
      compress quantize lm.keras -o lm.tflite --data npz:tokens.npz --keep-float self_attention
      compress quantize lm.keras -o lm.onnx --data npz:tokens.npz --keep-float auto
    """
    result = run_quantize(model, output, data, seed, unsafe, force, options)
    emit_result(result, as_json)


def run_quantize(model_path, output, data, seed, unsafe, force, options) -> dict:
    """Check everything cheap first (options, output, data need), then load, quantize and
    write the artifact atomically."""
    from compress import io
    from compress.cli.common import load_inputs
    from compress.quantization import SUFFIXES, format_for, quantize, require_data

    opts = QUANTIZE_OPTIONS.from_cli({**options, "seed": seed})
    if options.get("per_tensor"):
        opts["per_channel"] = False
    opts["format"] = format_for(output, opts)
    out = io.check_output(output, inputs=[model_path], force=force,
                          suffixes=(SUFFIXES[opts["format"]],))
    io.check_model_type(model_path)  # not a model at all: said before what it lacks
    require_data(opts, data)
    # A wrapped subclassed model is said once, at the end, as what the artifact holds.
    loaded, dataset = load_inputs(model_path, data, seed, unsafe, echo_note=False)
    content, info = quantize(loaded, dataset, **opts)
    io.write_bytes(out, content)
    result = {"input": model_path, "path": str(out), **info}
    used, asked = info.get("calibration_samples"), opts.get("calibration_samples")
    if used and asked and used < asked:  # a small folder: fewer than the default 256
        result["calibration_note"] = (f"calibrated on {used} samples, all the training "
                                      f"split holds ({asked} asked)")
    if dataset is None:
        result["random_check_inputs"] = True
    ctx = click.get_current_context(silent=True)
    wrapped = ctx is not None and ctx.meta.get("compress_input_note")
    note = input_note(loaded, info) if wrapped else None
    if note:
        result["input_note"] = note
    return result


def input_note(wrapper, info: dict) -> str | None:
    """What the artifact holds of a subclassed model that was wrapped into a functional
    one (``wrapper``: input, then the model), or None where the pass's own note (mode
    keras-int8 and Keras's other modes: a functional model of its layers) says it.

    Example:

    >>> input_note(wrapped_tinynet, {"format": "tflite"})   # doctest: +SKIP
    "subclassed model 'tiny' (TinyNet) traced with input shape (8, 8, 1) into the ..."
    """
    import keras

    inner = [lay for lay in wrapper.layers if not isinstance(lay, keras.layers.InputLayer)]
    sub = inner[0] if len(inner) == 1 else wrapper
    name = f"subclassed model '{sub.name}' ({type(sub).__name__})"
    if name in (info.get("export_copy") or ""):  # flattened: the pass said so
        return None
    shape = tuple(wrapper.inputs[0].shape[1:])
    if info["format"] == "keras":
        return (f"{name} wrapped into a functional model with input shape {shape}; the "
                ".keras file holds it as a layer (load it with the same --import)")
    return (f"{name} traced with input shape {shape} into the artifact's graph, which runs "
            "without --import")


def emit_result(result: dict, as_json: bool) -> None:
    """Print the float-vs-quantized table, or JSON."""
    from compress.cli.common import emit
    from compress.report import human_bytes

    if as_json:
        emit(result, True)
        return
    from rich.console import Console
    from rich.table import Table

    name = {"keras": "Keras", "onnx": "onnxruntime", "tflite": "LiteRT"}[result["format"]]
    table = Table(title=f"{result['mode']} {result['format']} vs float, both in {name}")
    table.add_column("")
    table.add_column("float")
    table.add_column(result["mode"])
    rows = [("file size", "float_bytes", "bytes", human_bytes),
            ("zipped size", "float_zipped_bytes", "zipped_bytes", human_bytes),
            ("accuracy", "float_accuracy", "accuracy", "{:.2%}".format),
            ("test MSE", "float_mse", "mse", "{:.4g}".format),
            ("test MAE", "float_mae", "mae", "{:.4g}".format)]
    for label, f_key, q_key, fmt in rows:
        if q_key in result:
            table.add_row(label, fmt(result[f_key]), fmt(result[q_key]))
    for key, value in (result.get("metrics") or {}).items():  # per output (several)
        f = (result.get("float_metrics") or {}).get(key)
        fmt = "{:.2%}".format if key.endswith("accuracy") else "{:.4g}".format
        table.add_row(key, "-" if f is None else fmt(f), fmt(value))
    for threads, q in result.get("latency_ms", {}).items():
        f = result["float_latency_ms"][threads]
        table.add_row(f"latency b=1, {threads} thread(s)", f"{f:.3f} ms",
                      f"{q:.3f} ms ({q / f:.2f}x)")
    if not result.get("verified", True):  # a check that can fail, and did: say so loudly
        table.add_row("agreement", "", f"[bold red]WARNING: {result['agreement']}[/]")
    for r in (result.get("layer_sqnr") or {}).get("layers", [])[:5]:  # --debug-layers
        table.add_row(f"SQNR {_scope(r)} ({r['op']})", "",
                      f"{r['sqnr_db']:.1f} dB")
    console = Console()
    console.print(table)
    named = result.get("artifact_outputs") or {}
    for name, check in (result.get("outputs") or {}).items():
        if isinstance(check, dict) and "sqnr_db" in check:
            top1 = (f", top-1 agreement {check['top1_agreement']:.2%}"
                    if "top1_agreement" in check else "")
            where = f" (the artifact's '{named[name]}')" if name in named else ""
            console.print(f"output {name}{where}: SQNR {check['sqnr_db']:.1f} dB, relative "
                          f"L2 error {check['rel_l2_error']:.2%}{top1}")
    if named and result.get("format") == "tflite":
        console.print("note: read the outputs by these names through the signature "
                      "(interpreter.get_signature_runner()); get_output_details() lists "
                      "them in an order of its own")
    if result.get("verified", True):
        # Without --data the check ran on seeded noise: a weaker check, said where it is read.
        on = (f" on {result.get('agreement_samples', 0)} random inputs, no --data"
              if result.get("random_check_inputs") else "")
        console.print(f"wrote {result['path']} ({result['size_ratio']:.2f}x the float size; "
                      f"verified against Keras{on}: {result.get('agreement', '')})")
    else:
        console.print(f"wrote {result['path']} ({result['size_ratio']:.2f}x the float size)")
        constant = result["agreement"].startswith("not verified")
        if constant:  # nothing to compare with: the warning below says why
            console.print(f"[bold red]warning:[/] the {result['mode']} model is "
                          f"{result['agreement']}")
        else:
            console.print(f"[bold red]warning:[/] the {result['mode']} model disagrees with "
                          f"its float model on {result['agreement_samples']} inputs: "
                          f"{result['agreement']}")
        if result.get("mode") == "int8" and result.get("format") in ("tflite", "onnx") \
                and not result.get("keep_float_auto") and not constant:
            console.print(f"hint: {keep_float_hint(result)}")
    if result.get("nothing_quantized"):
        console.print(f"[bold red]warning:[/] {result['nothing_quantized']}")
    if result.get("calibration_note"):
        console.print(f"note: {result['calibration_note']}")
    from compress.agreement import constant_note, xnnpack_note

    same = constant_note(result, result.get("agreement_samples", 0), "the float model",
                         random=result.get("random_check_inputs", False))
    if same:
        console.print(f"[bold red]warning:[/] {same}")
    if xnnpack_note(result):
        console.print(f"note: {xnnpack_note(result)}")
    if result.get("larger_than_float"):
        console.print(f"note: {result['larger_than_float']}")
    if result.get("quantized_layers"):
        console.print("quantized by Keras: " + ", ".join(
            f"{k} ({v})" for k, v in result["quantized_layers"].items()))
    if result.get("float_layers"):
        kinds = "Dense/EinsumDense" + ("" if result["mode"] in ("gptq", "awq") else "/Embedding")
        console.print(f"stayed float (Keras's {result['mode']} covers {kinds} only): "
                      + ", ".join(result["float_layers"]))
    for fmt, outcome in (result.get("exports") or {}).items():
        console.print(f"export to {fmt}: {outcome}")
    if result.get("rounding"):
        r = result["rounding"]
        console.print(f"weights rounded ({r['rounding']}) onto the {r['grid']} grid"
                      + (f": {len(r['layers'])} layers with layer Hessians, "
                         f"{r['seconds']:.1f} s" if r["layers"] else ""))
        if r.get("thin_hessians"):
            console.print(f"[bold red]warning:[/] {r['thin_hessians']}")
    if result.get("storage"):
        console.print(f"stored as {result['storage']}")
    zeros = result.get("weight_zeros") or {}
    if zeros.get("model", 0) > 0.01:
        console.print(f"zero weights kept: {zeros['artifact']:.1%} in the artifact "
                      f"({zeros['model']:.1%} in the model)")
    if result.get("latency_note"):
        console.print(result["latency_note"])
    if result.get("export_copy"):  # e.g. a mixed_float16 model, quantized via float32
        console.print(f"note: {result['export_copy']}")
    if result.get("float_front"):  # an input normalization kept float
        console.print(f"note: {result['float_front']}")
    if result.get("kept_float"):  # int8 nodes onnxruntime refused to run
        console.print(f"note: {result['kept_float']}")
    auto = result.get("keep_float_auto")
    if result.get("kept_float_layers"):  # --keep-float
        line = f"kept float (--keep-float): {', '.join(result['kept_float_layers'])}"
        if auto:
            put_back = f"; tried and put back: {', '.join(auto['put_back'])}" \
                if auto["put_back"] else ""
            line = (f"kept float (--keep-float auto): {', '.join(auto['layers'])} "
                    f"({auto['conversions']} conversions, layers ranked by "
                    f"{auto['ranked_by']}{put_back})")
        console.print(line)
    if auto and auto.get("note"):
        console.print(f"note: --keep-float auto: {auto['note']}")
    if result.get("float_front_warning"):
        console.print(f"[bold red]warning:[/] {result['float_front_warning']}")
    if result.get("lookups_note"):  # --without-lookups
        console.print(f"note: {result['lookups_note']}")
    if result.get("input_note"):  # a subclassed model, wrapped to be traced
        console.print(f"note: {result['input_note']}")
    if result.get("input_size_note"):  # unknown input sizes, no data: random inputs
        console.print(f"note: {result['input_size_note']}")
    if result.get("equalization"):
        console.print(f"note: {result['equalization']['note']}")
    if result.get("qat"):
        console.print("QAT: " + ", ".join(f"{k} {v}" for k, v in result["qat"].items()
                                          if not isinstance(v, (list, dict))
                                          and k != "float_note"))
        if result["qat"].get("float_note"):
            console.print(f"[bold red]warning:[/] {result['qat']['float_note']}")


def keep_float_hint(result: dict) -> str:
    """What to try on a flagged int8 artifact: with ``--debug-layers``, the layer whose
    ops lose most (a name ``--keep-float`` takes); without, how to find it.

    Example:

    >>> keep_float_hint({"layer_sqnr": {"layers": [
    ...     {"layer": "self_attention", "path": "backbone/block_0/self_attention",
    ...      "op": "BATCH_MATMUL", "sqnr_db": -1.1}]}})
    '--keep-float self_attention keeps float the layer whose int8 ops lose most \
(block_0/self_attention, BATCH_MATMUL, SQNR -1.1 dB; it matches that name at any depth)'
    >>> keep_float_hint({})[-46:]
    'keeps those float (--keep-float auto searches)'
    >>> keep_float_hint({"format": "onnx"})[:70]
    "--debug-layers (TFLite's debugger: quantize to a .tflite file with it)"
    """
    rows = (result.get("layer_sqnr") or {}).get("layers") or []
    if not rows:
        where = " (TFLite's debugger: quantize to a .tflite file with it)" \
            if result.get("format") == "onnx" else ""
        return (f"--debug-layers{where} ranks the layers by their int8 loss; --keep-float "
                "LAYERS keeps those float (--keep-float auto searches)")
    worst = rows[0]
    return (f"--keep-float {worst['layer']} keeps float the layer whose int8 ops lose most "
            f"({_scope(worst)}, {worst['op']}, SQNR "
            f"{worst['sqnr_db']:.1f} dB; it matches that name at any depth)")


def _scope(row: dict) -> str:
    """A ranked op's layer and the one around it (``block_0/self_attention``)."""
    return "/".join((row.get("path") or row["layer"]).split("/")[-2:])
