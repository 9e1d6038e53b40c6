"""Foundation: the baseline models, their reports, and export parity in the runtimes."""

from __future__ import annotations

from bench.harness import Section, table


def case_export_parity(ctx) -> Section:
    """Train LeNet-300-100 and the small CNN briefly; export both formats and verify."""
    from compress import export, runtime, training
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
            acc = runtime.artifact_accuracy(path, ds.x_test, ds.y_test)
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


def case_registry(ctx) -> Section:
    """The pass registry: ``compress --help`` lists every pass without importing TensorFlow."""
    import statistics
    import subprocess
    import sys
    import time

    from compress import passes

    sec = Section("Foundation: the pass registry and the CLI start-up", issue="#16")
    code = ("import sys; from compress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    times = []
    for _ in range(ctx.size(5, 11)):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=False)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"compress --help failed: {done.stderr[-500:]}")
    listed = [p.name for p in passes.all_passes() if p.cli and f"  {p.name} " in done.stdout]
    median = statistics.median(times)
    sec.add(f"`compress --help` in a fresh interpreter (Python start-up included), median of "
            f"{len(times)} runs: {median:.3f} s (min {min(times):.3f} s, max "
            f"{max(times):.3f} s). It reads every pass declaration of the registry and "
            f"lists {len(listed)} pass commands ({', '.join(listed)}) without importing "
            "TensorFlow or Keras.\n\n" + passes.markdown_table())
    sec.target("`compress --help` under 0.5 s with every registered pass listed (median)",
               f"{median:.3f} s, {len(listed)} of {sum(p.cli for p in passes.all_passes())}",
               "0.5 s", median < 0.5 and len(listed) == sum(p.cli for p in
                                                           passes.all_passes()))
    return sec


CASES = {"export-parity": case_export_parity, "registry": case_registry}
