"""The generic command of a pass that has no CLI module of its own.

``compress <pass> MODEL -o OUT [options]``: the flags come from the pass's Schema, the
rules (does it need ``--data``, what it writes) from its registry entry, so a new pass
is a command with no CLI code.
"""

from __future__ import annotations

import click

from compress.cli.common import common_options, model_argument, output_option


def pass_command(spec) -> click.Command:
    """A ``click.Command`` for the registered pass ``spec`` (a :class:`compress.passes.Pass`)."""
    writes = "a Keras model" if spec.produces == "model" else "the artifact"
    help_text = (f"{spec.summary[:1].upper()}{spec.summary[1:]}: read MODEL, write {writes} "
                 f"to OUT and print a before/after report.\n\n\b\nExample:\n  compress "
                 f"{spec.name} model.keras -o out{'.keras' if spec.produces == 'model' else ''}")

    @click.command(spec.name, help=help_text)
    @model_argument
    @output_option
    @spec.schema.click_options()
    @common_options
    def command(model, output, data, seed, unsafe, as_json, force, **options):
        run_pass_command(spec, model, output, data, seed, unsafe, as_json, force, options)

    return command


def run_pass_command(spec, model, output, data, seed, unsafe, as_json, force, options) -> dict:
    """Validate, refuse early (data, output), run the pass, write its result, report."""
    from compress import io
    from compress.cli.common import emit, load_inputs, run_model_pass, verbose

    opts = spec.schema.from_cli(options)
    if "seed" in spec.schema.options:
        opts["seed"] = seed
    io.check_model_type(model)  # not a model at all: said before what it lacks
    spec.require_data(opts, data, flags=True)
    if spec.produces == "model":
        return run_model_pass(model, output, data, seed, unsafe, force, as_json,
                              lambda loaded, ds: spec.run(loaded, ds, verbose=verbose(as_json),
                                                          **opts),
                              title=spec.name, after_name=spec.name, task_options=opts)
    io.check_output(output, inputs=[model], force=force, suffixes=(spec.artifact_suffix(opts),))
    loaded, dataset = load_inputs(model, data, seed, unsafe)
    content, info = spec.run(loaded, dataset, verbose=verbose(as_json), **opts)
    path = io.write_artifact(output, content, inputs=[model], force=force,
                             suffixes=(spec.artifact_suffix(opts),))
    result = {"input": model, "path": str(path), "bytes": len(content), **info}
    emit(result, as_json, lines=[f"wrote {path} ({len(content):,} bytes)"])
    return result
