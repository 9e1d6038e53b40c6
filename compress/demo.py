"""The tour behind ``compress demo``: one small model through every pass, then chained.

Trains LeNet-300-100 on the embedded ``mnist5k`` digits, then runs each pass on the
baseline (magnitude and OBD pruning, structured pruning, HashedNets, k-means sharing,
distillation to a narrower student, full-integer int8 TFLite, ONNX int8), then the
Deep-Compression-style chain (prune -> k-means -> int8), exports the baseline to ONNX and
TFLite and verifies both in their runtimes. Prints the table and writes it as
``report.md``/``report.json`` with a PNG plot to the output folder.

Example:

>>> from compress.demo import run_demo
>>> result = run_demo("compress-demo", force=True)    # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from compress.errors import CompressError


def _steps(quick: bool):
    """(name, function(model, ds, out) -> (new model, info)) pairs, in tour order."""
    e = 1 if quick else 2

    def prune_magnitude(model, ds, out):
        from compress.pruning import prune

        return prune(model, ds, method="magnitude", sparsity=0.9, schedule="gradual",
                     epochs=e)

    def prune_obd(model, ds, out):
        from compress.pruning import prune

        # OBD's own procedure: delete in steps, re-estimating saliencies, no retraining.
        return prune(model, ds, method="obd", sparsity=0.8, schedule="oneshot", steps=8)

    def prune_structured(model, ds, out):
        from compress.pruning import prune

        return prune(model, ds, method="magnitude", sparsity=0.5, structured=True, epochs=e)

    def hashed(model, ds, out):
        from compress.sharing import hash_model

        return hash_model(model, ds, factor=0.125, epochs=e)

    def kmeans(model, ds, out):
        from compress.sharing import cluster_model

        return cluster_model(model, ds, clusters=16, epochs=1)

    def distilled(model, ds, out):
        from compress.distillation import distill, width_student

        return distill(model, width_student(model, width=0.25), ds, epochs=e + 1)

    return [("magnitude 90%", prune_magnitude),
            ("OBD 80%", prune_obd),
            ("structured 50%", prune_structured),
            ("hashed 1/8", hashed),
            ("k-means 16", kmeans),
            ("distilled x0.25", distilled)]


def run_demo(output: str | Path = "compress-demo", force: bool = False, quick: bool = False,
             seed: int = 0, verbose: int | str = 0, say=print) -> dict:
    """Run the tour and write ``report.md``, ``report.json`` and ``report.png``.

    Args:
        output: folder for the report and artifacts (created).
        force: bool, default False. Reuse a non-empty output folder.
        quick: bool, default False. Fewer samples and epochs (used by the tests).
        seed: int, default 0.
        verbose: Keras ``verbose`` for the baseline fit.
        say: where progress lines go.
    """
    from compress.quiet import import_tensorflow

    import_tensorflow()
    from compress import export, io, training
    from compress.data import load_data, prepare
    from compress.models import build
    from compress.report import markdown_table, model_report, plot_reports

    out = Path(output)
    if out.exists() and any(out.iterdir()) and not force:
        raise CompressError(f"{out}: output folder is not empty; pass --force to reuse it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    training.set_seed(seed)
    model = build("lenet300")
    ds = prepare(model, load_data("mnist5k", seed))
    if quick:
        ds = ds.take(600, 300)
    say("training the baseline: LeNet-300-100 on mnist5k")
    training.compile_classifier(model)
    training.fit(model, ds, epochs=2 if quick else 8, verbose=verbose)
    baseline_path = out / "baseline.keras"
    io.save_model(model, baseline_path, force=True)
    reports = [model_report(model, ds, name="baseline", path=baseline_path)]
    infos = {}

    for name, fn in _steps(quick):
        say(f"pass: {name}")
        try:
            new, info = fn(training.copy_model(model), ds, out)
        except ImportError as exc:  # a pass this installation does not have
            say(f"  skipped ({exc})")
            continue
        path = out / (name.replace(" ", "-").replace("/", "-").replace("%", "") + ".keras")
        io.save_model(new, path, force=True)
        reports.append(model_report(new, ds, name=name, path=path))
        infos[name] = info

    say("chain: prune 90% -> k-means 16 -> int8 TFLite (Deep Compression style)")
    try:
        from compress.pruning import prune
        from compress.quantization import quantize
        from compress.sharing import cluster_model

        chained, _ = prune(training.copy_model(model), ds, method="magnitude", sparsity=0.9,
                           schedule="gradual", epochs=1 if quick else 2)
        chained, _ = cluster_model(chained, ds, clusters=16, epochs=1)
        tfl = out / "chain-int8.tflite"
        qinfo = quantize(chained, tfl, ds, mode="int8", force=True)
        reports.append(_artifact(tfl, ds, "chain int8.tflite"))
        infos["chain"] = qinfo
        say("pass: ONNX static int8")
        onnx_q = out / "int8.onnx"
        infos["onnx int8"] = quantize(training.copy_model(model), onnx_q, ds, mode="int8",
                                      force=True)
        reports.append(_artifact(onnx_q, ds, "int8.onnx"))
    except ImportError as exc:
        say(f"  skipped ({exc})")

    say("exporting the baseline to ONNX and TFLite and verifying in the runtimes")
    checks = {}
    for fmt in ("onnx", "tflite"):
        path = out / f"baseline.{fmt}"
        checks[fmt] = export.export(model, path, fmt=fmt, x=ds.x_test[:256], force=True)
        reports.append(_artifact(path, ds, f"float.{fmt}"))
    for r in reports:
        r.pop("layers", None)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "reports": reports, "exports": checks, "passes": infos}
    io.write_bytes(out / "report.json", json.dumps(result, indent=2, default=str).encode())
    plot_reports(reports, out / "report.png", title="compress demo: LeNet-300-100 on mnist5k")
    md = ["# compress demo", "", f"LeNet-300-100 on mnist5k, seed {seed}, {seconds:.0f} s.", "",
          markdown_table(reports), "", "![accuracy vs size](report.png)", ""]
    md += [f"- {fmt}: max abs diff {c['max_abs_diff']:.1e}, top-1 agreement "
           f"{c['top1_agreement']:.0%} on {c['samples']} inputs" for fmt, c in checks.items()]
    io.write_bytes(out / "report.md", "\n".join(md).encode())
    return result


def _artifact(path: Path, ds, name: str) -> dict:
    from compress import export
    from compress.report import zipped_size

    return {"name": name, "file_bytes": path.stat().st_size, "zipped_bytes": zipped_size(path),
            "accuracy": export.artifact_accuracy(path, ds.x_test, ds.y_test),
            "latency_ms": export.runtime_latency_ms(path, ds.sample_shape, threads=1, runs=30)}
