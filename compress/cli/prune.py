"""``compress prune MODEL -o OUT --method magnitude|obd --sparsity 0.9 [...]``."""

import click

from compress.cli.common import common_options, model_argument, output_option
from compress.pruning.prune_options import PRUNE_OPTIONS


@click.command("prune")
@model_argument
@output_option
@PRUNE_OPTIONS.click_options()
@common_options
def command(model, output, data, seed, unsafe, as_json, force, **options):
    """Prune MODEL (magnitude, Optimal Brain Damage or Optimal Brain Surgeon) and save a
    plain Keras model to the -o file.

    Unstructured pruning zeros weights (smaller zipped file; dense kernels do not run
    faster). --structured removes whole units/filters and rebuilds smaller layers (a
    measured latency drop). Without --data only data-free magnitude one-shot pruning is
    possible: OBD, OBS, fine-tuning (--epochs), --schedule gradual/iterative and
    --distill need --data.

    \b
    Examples:
      compress prune model.keras -o pruned.keras --sparsity 0.8
      compress prune model.keras -o pruned.keras --method obd --data mnist5k \\
          --schedule iterative --epochs 6 --sparsity 0.9
      compress prune cnn.keras -o small.keras --structured --sparsity 0.5 \\
          --data animals --epochs 3
      compress prune cnn.keras -o small.keras --structured --method obs \\
          --sparsity 0.5 --data animals   # OBS-chosen units, consumers refit
      compress prune model.keras -o pruned.keras --layers 'fc1,conv.*'
    """
    from compress import io
    from compress.cli.common import run_model_pass, verbose
    from compress.pruning.prune_pass import PASS

    opts = PRUNE_OPTIONS.from_cli(options)
    opts["seed"] = seed
    io.check_model_type(model)  # not a model at all: said before what it lacks
    PASS.require_data(opts, data, flags=True)
    io.check_output(output, inputs=[model], force=force, suffixes=io.MODEL_SUFFIXES)

    def apply(loaded, dataset):
        from compress.pruning import prune

        new_model, info = prune(loaded, dataset, verbose=verbose(as_json), **opts)
        if "layers" in info:
            info["per_layer"] = ", ".join(f"{r['weight']} {r['sparsity']:.1%}"
                                          for r in info["layers"])
        if info.get("left_out"):  # OBD/OBS: layers whose Hessian cannot be formed
            info["left_dense"] = (", ".join(info["left_out"])
                                  + " (no layer Hessian; the reasons are in --json)")
        if not opts["structured"]:
            info["note"] = ("zeros shrink the zipped file; dense kernels run at the same "
                            "speed (use --structured for a latency drop)")
        return new_model, info

    run_model_pass(model, output, data, seed, unsafe, force, as_json, apply,
                   title=f"prune ({opts['method']}, {opts['schedule']})", after_name="pruned",
                   task_options=opts)
