"""Foundation: the baseline models, their reports, and export parity in the runtimes."""

from __future__ import annotations

from bench.harness import Section, table


def case_export_parity(ctx) -> Section:
    """Train LeNet-300-100 and the small CNN briefly; export both formats and verify."""
    from compress import export, training
    from compress.data import load_data, prepare
    from compress.models import build
    from compress.report import model_report

    sec = Section("Foundation: baselines and export parity", issue="#2")
    rows = []
    for name, data in (("lenet300", "mnist5k"), ("small-cnn", "mnist5k")):
        model = build(name)
        ds = prepare(model, load_data(data, ctx.seed))
        if ctx.quick:
            ds = ds.take(512, 256)
        training.compile_classifier(model)
        training.fit(model, ds, epochs=ctx.size(1, 5), verbose=0)
        rep = model_report(model, ds, name=name)
        x = ds.x_test[:256]
        for fmt in ("onnx", "tflite"):
            path = ctx.work_dir / f"{name}.{fmt}"
            check = export.export(model, path, fmt=fmt, x=x, force=True)
            acc = export.artifact_accuracy(path, ds.x_test, ds.y_test)
            rows.append([name, fmt, f"{rep['accuracy']:.2%}", f"{acc:.2%}",
                         f"{check['max_abs_diff']:.1e}", f"{check['top1_agreement']:.0%}",
                         f"{check['bytes'] / 1024:.0f} KB"])
            sec.target(f"{name} {fmt}: max abs diff <= 1e-4, top-1 agreement 100% on 256 inputs",
                       f"{check['max_abs_diff']:.1e}, {check['top1_agreement']:.0%}",
                       "1e-4, 100%",
                       check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0)
    sec.add(table(["model", "format", "Keras acc", "runtime acc", "max abs diff",
                   "top-1 agreement", "file"], rows))
    return sec


CASES = {"export-parity": case_export_parity}
