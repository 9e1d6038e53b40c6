"""``compress share MODEL -o OUT --method hash|kmeans``: weight sharing, with a report."""

import click

from compress.cli.common import common_options, model_argument, output_option
from compress.sharing.share_options import SHARE_OPTIONS


@click.command("share")
@model_argument
@output_option
@SHARE_OPTIONS.click_options()
@common_options
def command(model, output, data, seed, unsafe, as_json, force, **options):
    """Share MODEL's weights: HashedNets (--method hash: each Dense, Conv1D/2D/3D kernel
    and Embedding table becomes K = factor * m * n hash buckets, exports stay small) or
    k-means (--method kmeans:
    each kernel keeps --clusters distinct values; a plain model out). Prints stored
    parameters, bits per weight, file and zipped size and accuracy, before and after.

    Fine-tuning (--epochs N) needs --data. Nothing is written on error.

    \b
    Examples:
      compress share model.keras -o hashed.keras --method hash --factor 0.125 \\
          --data mnist5k --epochs 10
      compress share model.h5 -o clustered.keras --method kmeans --clusters 16 \\
          --data mnist5k --epochs 2
      compress share model.keras -o out.keras --method hash --layers 'fc1,fc2' --json
    """
    from compress.cli.common import run_model_pass, verbose
    from compress.sharing import PASS

    opts = SHARE_OPTIONS.from_cli(options)
    opts["seed"] = seed
    title = (f"HashedNets, factor {opts['factor']}" if opts["method"] == "hash"
             else f"k-means, {opts['clusters']} clusters")

    def apply(loaded, dataset):
        from compress.sharing import share

        return share(loaded, dataset, verbose=verbose(as_json), **opts)

    from compress import io

    io.check_model_type(model)  # not a model at all: said before what it lacks
    PASS.require_data(opts, data, flags=True)
    run_model_pass(model, output, data, seed, unsafe, force, as_json, apply, title,
                   after_name=opts["method"], task_options=opts)
