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

    \b
    Examples:
      compress inspect model.h5
      compress inspect model.keras --data mnist5k --json
    """
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
    emit(report, as_json, reports=[report], title=f"{model}", lines=lines)


def _is_dir(path):
    import os

    return os.path.isdir(path)
