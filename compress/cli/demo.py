"""``compress demo``: the whole toolkit on embedded data, in a few minutes."""

import click

from compress.cli.common import force_option


@click.command("demo")
@click.option("-o", "--output", default="compress-demo", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the report and artifacts.")
@click.option("--quick", is_flag=True, help="Fewer samples and epochs (a smoke run).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@force_option
def command(output, quick, seed, force):
    """Train LeNet-300-100 on the embedded mnist5k digits, run every pass on it (pruning
    by magnitude and OBD, structured pruning, HashedNets, k-means, distillation, int8
    TFLite and ONNX), chain prune -> k-means -> int8, export ONNX and TFLite and verify
    them in onnxruntime and LiteRT. Prints the before/after table and writes report.md,
    report.json and report.png to OUTPUT.
    """
    from compress.quiet import import_tensorflow

    import_tensorflow()
    from compress.cli.common import progress_to_stderr
    from compress.demo import run_demo
    from compress.report import print_table

    console = progress_to_stderr()
    result = run_demo(output, force=force, quick=quick, seed=seed,
                      say=lambda msg: console.print(f"[bold]>>[/bold] {msg}"))
    print_table(result["reports"], title="compress demo: LeNet-300-100 on mnist5k")
    click.echo(f"wrote {output}/report.md, report.json and report.png "
               f"({result['seconds']:.0f} s)")
