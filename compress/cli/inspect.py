"""``compress inspect MODEL``: the report of one model."""

import click

from compress.cli.common import (
    data_option,
    emit,
    json_option,
    model_argument,
    provider_option,
    seed_option,
    unsafe_option,
)


@click.command("inspect")
@model_argument
@data_option
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True, help="Split to measure accuracy on (with --data).")
@click.option("--layers/--no-layers", "show_layers", default=True, show_default=True,
              help="Show the per-layer sparsity table.")
@click.option("--latency/--no-latency", default=True, show_default=True,
              help="Measure batch-1 latency of the Keras model.")
@provider_option
@seed_option
@unsafe_option
@json_option
def command(model, data, split, show_layers, latency, seed, unsafe, as_json):
    """Report a model: parameters, nonzeros, per-layer sparsity, file and zipped size,
    accuracy (with --data) and batch-1 latency.

    A .tflite or .onnx artifact is read without TensorFlow: its inputs and outputs (type,
    shape, int8 scale and zero point), stored weights by type (int8 per-channel or
    per-tensor), operators by kind, and batch-1 latency in LiteRT or onnxruntime.

    \b
    Examples:
      compress inspect model.h5
      compress inspect model.keras --data mnist5k --json
      compress inspect model.tflite      # what the converter wrote
    """
    from compress import artifacts

    if artifacts.is_artifact(model):
        return _inspect_artifact(model, data, latency, as_json)
    from compress.cli.common import load_inputs
    from compress.report import model_report

    loaded, dataset = load_inputs(model, data, seed, unsafe, single_io=False)
    path = model if not _is_dir(model) else None
    report = model_report(loaded, dataset, split=split, latency=latency, name=loaded.name,
                          path=path)
    report["file"] = str(model)
    lines = []
    if show_layers and not as_json:
        lines = [f"  {r['layer']:<24} {r['type']:<22} {r['params']:>10,} params  "
                 f"{r['sparsity']:6.1%} zero" for r in report["layers"]]
        lines.insert(0, "per-layer sparsity:")
    from compress.export import unknown_size_note

    note = unknown_size_note(loaded, dataset, done="timed") if latency else None
    if note:
        report["input_size_note"] = note
        lines.append(f"note: {note}")
    from compress.report import few_samples_note

    if few := few_samples_note(report):
        lines.append(f"note: {few}")
    emit(report, as_json, reports=[report], title=f"{model}", lines=lines)


def _inspect_artifact(path, data, latency, as_json):
    """``inspect`` of a .tflite/.onnx file: its structure, and its latency in its runtime."""
    from compress import artifacts, runtime
    from compress.cli.common import refuse_missing
    from compress.errors import CompressError

    refuse_missing(path)
    if data is not None:
        raise CompressError(f"{path}: --data scores a Keras model on its task; an artifact "
                            "alone has none (quantize and export score the artifact against "
                            "the model they start from)")
    report = artifacts.summary(path)
    shapes = artifacts.sample_shapes(report)
    why = ("it reads weights from other files (external data), which inspect does not open"
           if report.get("external_data") else
           "an input is not numeric" if shapes is None else None)
    if latency and why:
        report["latency_not_measured"] = why
    elif latency:
        try:
            report["latency_ms"] = runtime.runtime_latency_ms(path, shapes, threads=1,
                                                              fmt=report["format"])
            report["runtime"] = ("LiteRT" if report["format"] == "tflite" else
                                 f"onnxruntime {runtime.provider()}")
            if any(None in t["shape"][1:] for t in report["inputs"]):  # sizes it chose
                report["latency_input"] = shapes
        except Exception as exc:  # noqa: BLE001 - the structure is still worth reporting
            text = " ".join(str(exc).split())[:160]
            report["latency_not_measured"] = (f"the runtime refused it ({type(exc).__name__}: "
                                              f"{text})")
    emit(report, as_json, lines=artifacts.lines(report))
    return report


def _is_dir(path):
    import os

    return os.path.isdir(path)
