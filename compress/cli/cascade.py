"""``compress cascade MODEL_OR_BUILDER -o OUT --data NAME``: Deep Cascade Learning."""

import os

import click

from compress.cascade.options import CASCADE_OPTIONS
from compress.cli.common import common_options, output_option


@click.command("cascade")
@click.argument("model", metavar="MODEL_OR_BUILDER")
@output_option
@CASCADE_OPTIONS.click_options()
@common_options
def command(model, output, data, seed, unsafe, as_json, force, **options):
    """Train MODEL_OR_BUILDER block by block (Deep Cascade Learning, Marquez et al. 2018)
    and save the trained model. MODEL_OR_BUILDER is a model file (its weights are the
    starting point) or a builder name (lenet300, lenet5, small-cnn, cnn4). Stage l trains
    block l with a temporary output block for EPOCHS + K*l epochs, dividing the learning
    rate by 10 on a validation plateau, then freezes it and caches its outputs.

    \b
    Examples:
      compress cascade cnn4 -o cascade.keras --data animals --epochs 2 --k 1
      compress cascade model.keras -o out.keras --data digits --fine-tune-epochs 2 --json
    """
    from pathlib import Path

    from compress import data as data_mod
    from compress import io
    from compress.cli.common import emit, read_data, start_work, verbose
    from compress.errors import CompressError
    from compress.models import BUILDERS

    opts = CASCADE_OPTIONS.from_cli({**options, "seed": seed})
    if not data:
        raise CompressError("cascade needs --data (for example --data animals)")
    is_builder = model in BUILDERS and not Path(model).exists()
    if not is_builder and not os.path.lexists(model):
        raise CompressError(f"{model}: no such model file, and not a builder (builders: "
                            f"{', '.join(BUILDERS)})")
    inputs = [] if is_builder else [model]
    io.check_output(output, inputs=inputs, force=force, suffixes=io.MODEL_SUFFIXES)
    dataset = read_data(data, seed)  # with --preprocess / --val-data / --val-split
    if not is_builder:
        io.check_model_file(model)  # a corrupt file is refused before TensorFlow loads

    start_work()  # every check above needs no TensorFlow
    from compress import training
    from compress.cascade.cascade_pass import cascade_train
    from compress.models import build
    from compress.report import model_report

    training.set_seed(seed)
    if is_builder:
        start = build(model, input_shape=dataset.sample_shape, num_classes=dataset.num_classes)
    else:
        start = io.load_model(model, unsafe=unsafe)
    trained, info = cascade_train(start, dataset, verbose=verbose(as_json), **opts)
    io.save_model(trained, output, inputs=inputs, force=force)
    with io.undone_on_failure(output):
        prepared = data_mod.prepare(trained, dataset)
        after = model_report(trained, prepared, name="cascade", path=output)
    result = {"input": model, "output": output, "after": after, "pass": info}
    def scores(d, prefix):  # the task's own: accuracy, or MSE and MAE for a regression
        return ", ".join(f"{prefix} {k[len(prefix) + 1:].replace('_', ' ')} "
                         + (f"{v:.2%}" if k.endswith(("accuracy", "agreement")) else f"{v:.4g}")
                         for k, v in d.items() if k.startswith(prefix + "_")
                         and isinstance(v, float))

    lines = [f"wrote {output}"] + [
        f"  stage {s['stage']} ({', '.join(s['layers'])}): {s['epochs']} epochs, "
        f"{scores(s, 'val')}, {s['seconds_per_epoch']:.2f} s/epoch, "
        f"~{s['train_memory_bytes'] / 2**20:.1f} MiB" for s in info["stages"]]
    lines.append(f"  {scores(info, 'test')} after {info['total_epochs']} epochs")
    from compress.report import few_samples_note

    if few := few_samples_note(after):
        lines.append(f"  note: {few}")
    emit(result, as_json, reports=[after], title="cascade", lines=lines)
