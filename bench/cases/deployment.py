"""Latency of deployed artifacts (#9): the CNN as float, int8 and structured-pruned files,
batch 1 and 32, one and two threads, in LiteRT and onnxruntime, measured back to back."""

from __future__ import annotations

from bench.harness import Section, table


def case_deployment(ctx) -> Section:
    from bench.baselines import trained
    from compress import export, io, runtime
    from compress.pruning import prune
    from compress.quantization import quantize
    from compress.report import zipped_size

    sec = Section("Latency of deployed artifacts (small CNN, animals)", issue="#9")
    dense, ds = trained("small-cnn", "animals", ctx)
    slim, _ = prune(dense, ds, sparsity=0.5, structured=True, epochs=ctx.size(1, 4))
    work = ctx.work_dir / "deployment"
    work.mkdir(exist_ok=True)
    x = ds.x_test[:256]
    artifacts = {}
    for name, model in (("float", dense), ("structured 50%", slim)):
        for fmt in ("tflite", "onnx"):
            path = work / f"{name.split()[0]}.{fmt}"
            export.export(model, path, fmt=fmt, x=x, force=True)
            artifacts[(name, fmt)] = path
        for fmt in ("tflite", "onnx"):
            path = work / f"{name.split()[0]}-int8.{fmt}"
            content, _ = quantize(model, ds, mode="int8", format=fmt, latency=False)
            io.write_bytes(path, content)
            artifacts[(f"{name} + int8", fmt)] = path
    runs = ctx.size(20, 100)
    rows, lat = [], {}
    for (name, fmt), path in artifacts.items():
        engine = "LiteRT" if fmt == "tflite" else "onnxruntime"
        cells = []
        for batch in (1, 32):
            for threads in (1, 2):
                ms = runtime.runtime_latency_ms(path, ds.sample_shape, batch=batch,
                                                threads=threads, runs=runs)
                lat[(name, fmt, batch, threads)] = ms
                cells.append(f"{ms:.3f}")
        acc = runtime.artifact_accuracy(path, ds.x_test, ds.y_test)
        rows.append([engine, name, f"{acc:.2%}", f"{zipped_size(path) / 1024:.0f} KB"] + cells)
    sec.add(f"Small CNN (3 Conv-BN-ReLU blocks) on Animal-MNIST, {len(ds.x_test)} test "
            "images; accuracy measured in the runtime. Latency in ms, median of "
            f"{runs} calls.")
    sec.add(table(["runtime", "artifact", "accuracy", "zipped", "b=1 1 thr", "b=1 2 thr",
                   "b=32 1 thr", "b=32 2 thr"], rows))
    ratios = []
    for fmt in ("tflite", "onnx"):
        for name in ("float", "structured 50%", "float + int8", "structured 50% + int8"):
            ratios.append([fmt, name] + [f"{lat[(name, fmt, b, t)] / lat[('float', fmt, b, t)]:.2f}x"
                                         for b in (1, 32) for t in (1, 2)])
    sec.add("Latency relative to the float artifact in the same runtime and setting:")
    sec.add(table(["format", "artifact", "b=1 1 thr", "b=1 2 thr", "b=32 1 thr",
                   "b=32 2 thr"], ratios))
    ctx.facts["deploy_int8_tflite_ratio_b1"] = lat[("float + int8", "tflite", 1, 1)] / \
        lat[("float", "tflite", 1, 1)]
    return sec


CASES = {"deployment": case_deployment}
