"""``compress run RECIPE.yaml``: run a recipe's chain of passes."""

import click

from compress.cli.common import force_option, json_option, unsafe_option


@click.command("run")
@click.argument("recipe", type=click.Path(readable=False))
@click.option("-o", "--output", default=None, type=click.Path(readable=False),
              help="Output folder (default: the recipe's 'output', else ./recipe-out).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a recipe field, e.g. --set steps[0].prune.sparsity=0.95 "
                   "(repeatable; the value is read as YAML).")
@click.option("--quick", is_flag=True,
              help="Run the recipe's reduced form (its 'quick' overrides: fewer epochs, less "
                   "data).")
@click.option("--check", is_flag=True, help="Validate the recipe and exit without running it.")
@unsafe_option
@json_option
@force_option
def command(recipe, output, overrides, quick, check, unsafe, as_json, force):
    """Run RECIPE (YAML): build or load the model, then each step in order (train, prune,
    share, distill, cascade, quantize, export). Every step's before/after report goes to
    OUTPUT/report.json and OUTPUT/report.md with plots, beside each step's artifact. A
    step that fails leaves the finished steps' artifacts and a report saying where and why.
    With --force the files an earlier run wrote are replaced; nothing else in OUTPUT is
    touched. A recipe's own `unsafe: true` is refused unless you pass --unsafe.

    \b
    Examples:
      compress run recipes/han2015-lenet300.yaml -o out/han
      compress run recipes/han2015-lenet300.yaml --set steps[0].prune.sparsity=0.95
      compress run my.yaml --check
    """

    from compress.cli.common import emit, progress_to_stderr, start_work, verbose
    from compress.quiet import quiet_output
    from compress.recipes import load_recipe, run_recipe

    if check:
        with quiet_output():  # checking callbacks imports Keras: keep its chatter off
            validated = load_recipe(recipe, list(overrides), quick=quick, unsafe=unsafe)
        if as_json:
            from compress.report import finite_json

            click.echo(finite_json(validated))
        else:
            click.echo(f"{recipe}: valid ({len(validated['steps'])} steps: "
                       + ", ".join(next(iter(s)) for s in validated["steps"]) + ")")
        return
    console = progress_to_stderr()
    result = run_recipe(recipe, output=output, overrides=list(overrides), force=force, quick=quick,
                        unsafe=unsafe, start=start_work,
                        verbose=verbose(as_json),
                        progress=lambda msg: console.print(f"[bold]>>[/bold] {msg}"))
    reports = [result["baseline"]] + [s["after"] for s in result["steps"]]
    emit(result, as_json, reports=reports, title=result["recipe"],
         lines=[f"[bold red]warning:[/bold red] {w}" for w in result.get("warnings", [])]
         + [f"wrote {result['output']}/report.md and report.json"])
