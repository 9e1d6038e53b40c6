"""compress.options: one schema checks CLI, recipe and Python values alike."""

import pytest

from compress.errors import CompressError
from compress.options import Option, Schema

SCHEMA = Schema("prune", [
    Option("sparsity", float, 0.9, "fraction zeroed", low=0.0, high=1.0, high_inclusive=False),
    Option("method", str, "magnitude", "criterion", choices=("magnitude", "obd")),
    Option("epochs", int, 0, "fine-tune epochs", low=0),
    Option("layers", list, None, "layer regexes"),
    Option("structured", bool, False, "remove whole units"),
])


def test_defaults_and_coercion():
    out = SCHEMA.validate({"sparsity": 1 / 2, "epochs": 3.0, "layers": "fc1,fc2"})
    assert out == {"sparsity": 0.5, "method": "magnitude", "epochs": 3,
                   "layers": ["fc1", "fc2"], "structured": False}


@pytest.mark.parametrize("values,message", [
    ({"sparsity": 1.0}, "steps[0].prune.sparsity: must be in [0.0, 1.0), got 1.0"),
    ({"method": "random"}, "steps[0].prune.method: must be one of magnitude, obd"),
    ({"epochs": "many"}, "steps[0].prune.epochs: must be an integer"),
    ({"epochs": True}, "steps[0].prune.epochs: must be an integer"),
    ({"sparsty": 0.5}, "steps[0].prune.sparsty: unknown option"),
    ({"structured": "maybe"}, "steps[0].prune.structured: must be true or false"),
])
def test_errors_name_the_field_path(values, message):
    with pytest.raises(CompressError) as err:
        SCHEMA.validate(values, path="steps[0].prune")
    assert str(err.value).startswith(message)


def test_cli_flags_from_schema():
    import click
    from click.testing import CliRunner

    @click.command()
    @SCHEMA.click_options()
    def cmd(**kwargs):
        click.echo(repr(SCHEMA.from_cli(kwargs)))

    result = CliRunner().invoke(cmd, ["--sparsity", "0.8", "--method", "obd", "--structured"])
    assert result.exit_code == 0, result.output
    assert "'sparsity': 0.8" in result.output and "'structured': True" in result.output
    bad = CliRunner().invoke(cmd, ["--sparsity", "1.5"])
    assert isinstance(bad.exception, CompressError)
    assert "--sparsity: must be in" in str(bad.exception)
