"""``compress demo``: the whole toolkit on embedded data, in a few minutes.

The tour is a recipe shipped in the package (``compress/recipes/demo.yaml``), run by
the recipe runner like any other.
"""

import click

from compress.cli.common import force_option


@click.command("demo")
@click.option("-o", "--output", default="compress-demo", show_default=True,
              type=click.Path(readable=False), help="Folder for the report and artifacts.")
@click.option("--quick", is_flag=True, help="Fewer samples and epochs (a smoke run).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@force_option
def command(output, quick, seed, force):
    """Train LeNet-300-100 on the embedded mnist5k digits, run every pass on it (pruning
    by magnitude and OBD, structured pruning, HashedNets, k-means, distillation, int8
    ONNX), chain prune -> k-means -> int8 TFLite, export ONNX and TFLite and verify them in
    onnxruntime and LiteRT. Prints the before/after table and writes report.md,
    report.json and plots to OUTPUT.

    \b
    Examples:
      compress demo
      compress demo --quick -o /tmp/demo --force
      compress run $(python -c "import compress.recipes as r; print(r.DEMO)") --check
    """
    from compress.cli.common import progress_to_stderr
    from compress.recipes import DEMO, run_recipe
    from compress.report import print_table

    console = progress_to_stderr()
    result = run_recipe(DEMO, output=output, overrides=[f"seed={seed}"], force=force,
                        quick=quick, progress=lambda msg: console.print(f"[bold]>>[/bold] {msg}"))
    reports = [result["baseline"]] + [s["after"] for s in result["steps"]]
    print_table(reports, title=result["recipe"])
    click.echo(f"wrote {output}/report.md, report.json and plots ({result['seconds']:.0f} s)")
