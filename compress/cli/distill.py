"""``compress distill TEACHER -o OUT [--student FILE | --width W | --depth N] --data NAME``."""

import click

from compress.cli.common import common_options, model_argument, output_option
from compress.distillation.options import DISTILL_OPTIONS


@click.command("distill")
@model_argument
@output_option
@DISTILL_OPTIONS.click_options()
@common_options
def command(model, output, data, seed, unsafe, as_json, force, **options):
    """Train a smaller student on the teacher MODEL's softened outputs (Hinton et al.
    2015, through keras.distillation) and save it to OUT.

    The student is --student FILE, or derived from the teacher: --width scales every
    hidden Dense/Conv width (default 0.25), --depth drops hidden blocks. The report
    compares the teacher, the same student trained on labels alone for the same epochs
    (skip with --no-baseline), and the distilled student: accuracy, parameters, zipped
    size, latency.

    \b
    Examples:
      compress distill teacher.keras -o student.keras --data mnist5k --width 0.25
      compress distill teacher.keras -o small.keras --student small_init.keras \\
          --data mnist5k --temperature 4 --alpha 0.9 --epochs 20 --json
    """
    from compress import io
    from compress.cli.common import refuse_missing
    from compress.errors import CompressError

    opts = DISTILL_OPTIONS.from_cli({**options, "seed": seed})
    if not data:
        raise CompressError("distill needs --data (for example --data mnist5k)")
    inputs = [model] + ([opts["student"]] if opts["student"] else [])
    io.check_output(output, inputs=inputs, force=force, suffixes=io.MODEL_SUFFIXES)
    if opts["student"]:
        refuse_missing(opts["student"])
    return distill_files(model, output, data, seed, unsafe, force, opts, as_json)


def distill_files(model_path, output, data, seed, unsafe, force, opts, as_json):
    """Load, distill (and train the baseline), save, report teacher / alone / distilled."""
    from compress import io
    from compress.cli.common import emit, load_inputs, verbose

    # First the checks that need no TensorFlow (the files, the data), then the imports.
    teacher, dataset = load_inputs(model_path, data, seed, unsafe)
    from compress.distillation import distill_from_options
    from compress.report import model_report

    distilled, alone, info = distill_from_options(teacher, dataset, opts, unsafe=unsafe,
                                                  verbose=verbose(as_json))
    io.save_model(distilled, output, inputs=[model_path], force=force)
    # Every size as the output is saved (no optimizer state, its format): the teacher's
    # file keeps its optimizer slots, which the table credited to distillation.
    saved_as = ".h5" if str(output).endswith(".h5") else ".keras"
    with io.undone_on_failure(output):
        reports = [model_report(teacher, dataset, name="teacher", saved_as=saved_as)]
        if alone is not None:
            reports.append(model_report(alone, dataset, name="student alone",
                                        saved_as=saved_as))
        # Without labels: the student's fidelity to the teacher (error, agreement) scores it.
        reports.append(model_report(distilled, dataset, name="distilled", path=output,
                                    reference=teacher))
    if not as_json:
        info.pop("history", None)
    result = {"input": model_path, "output": output, "reports": reports, "pass": info}
    lines = [f"wrote {output}",
             (f"  student: {info['student_source']}, "
              + (f"T={info['temperature']:g}, " if info.get("temperature_used", True) else "")
              + (f"alpha={info['alpha']:g}, " if info.get("alpha_used", True) else "")
              + f"{info['epochs_run']} epochs, "
              + (f"loss: {info['loss']}" if "loss" in info else
                 f"teacher outputs {info['teacher_outputs']}"))]
    if info.get("baseline"):
        lines.append(f"  baseline: {info['baseline']}")
    if info.get("gap_closed") is not None:
        lines.append(f"  distillation closed {info['gap_closed']:.0%} of the accuracy gap "
                     "between the student alone and the teacher")
    from compress.report import few_samples_note

    if few := few_samples_note(reports[-1]):
        lines.append(f"  note: {few}")
    emit(result, as_json, reports=reports, title="distill", lines=lines)
    return result
