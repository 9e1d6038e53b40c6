"""Options and output shared by the CLI commands."""

from __future__ import annotations

import json
import sys

import click

output_option = click.option("-o", "--output", "output", required=True,
                             type=click.Path(dir_okay=True),
                             help="Output file. Refused if it exists, unless --force.")
force_option = click.option("--force", is_flag=True, help="Overwrite an existing output file.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout (progress goes to stderr).")
unsafe_option = click.option(
    "--unsafe", is_flag=True,
    help="Load models with Keras safe_mode off. This EXECUTES Python code stored in the file "
         "(Lambda layers): use only for files you trust.")
data_option = click.option(
    "--data", "data", default=None, metavar="NAME",
    help="Dataset: digits, mnist5k, animals, or npz:PATH (x_train, y_train, optional "
         "x_val/y_val/x_test/y_test).")
seed_option = click.option("--seed", default=0, show_default=True, type=int,
                           help="Random seed (data split, initialisation, sampling).")
model_argument = click.argument("model", type=click.Path(dir_okay=True))


def common_options(func):
    """--data, --seed, --unsafe, --json and --force, in that order."""
    for deco in reversed([data_option, seed_option, unsafe_option, json_option, force_option]):
        func = deco(func)
    return func


def verbose(as_json: bool) -> int | str:
    """Keras ``verbose`` for fits: the progress bar, unless stdout must stay pure JSON."""
    return 0 if as_json else "auto"


def emit(result: dict, as_json: bool, reports: list | None = None, title: str | None = None,
         lines: list[str] = ()) -> None:
    """Print ``result`` as JSON, or the reports as a table followed by ``lines``."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=_jsonable))
        return
    from rich.console import Console

    from compress.report import print_table

    console = Console()
    if reports:
        print_table(reports, title=title, console=console)
    for line in lines:
        console.print(line)


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def progress_to_stderr():
    """A rich Console on stderr for progress bars (keeps stdout clean for --json)."""
    from rich.console import Console

    return Console(file=sys.stderr)


def load_inputs(model_path: str, data: str | None, seed: int, unsafe: bool):
    """Seed, load the model (safe mode unless --unsafe) and the data fitted to it."""
    from compress.quiet import import_tensorflow

    import_tensorflow()
    from compress import data as data_mod
    from compress import io, training

    training.set_seed(seed)
    model = io.load_model(model_path, unsafe=unsafe)
    dataset = data_mod.prepare(model, data_mod.load_data(data, seed)) if data else None
    return model, dataset
