"""Model zoo speed and int8 quality (#19): the numbers the coverage table does not give.

Three measurements on ``keras.applications`` families built with ``weights=None`` at the
zoo's input sizes (:data:`compress.models.APPLICATIONS`), each family in its own child
process (a 25M-parameter model's memory is returned before the next one is built):

- **Speed of data-free pruning.** ResNet50 (23.6M parameters): ``io.load_model`` and
  ``model.save`` of its ``.keras`` file, and one-shot magnitude pruning to 50% without
  data (``prune(model, None, sparsity=0.5)``), timed in the same process (best of two);
  and, in a second fresh process, the peak resident memory (``ru_maxrss``) of loading,
  pruning and exporting it to a verified float TFLite file.
- **Structured 50% on each CNN family.** ``prune(model, ds, sparsity=0.5, structured=True)``:
  parameters before and after, the output shape, and the batch-1 latency of both float
  TFLite files in LiteRT on one thread, measured alternately (before, after, three
  times; the least median of each) in one process.
- **Why int8 loses on random-weight families.** The int8 TFLite artifact's output SQNR
  and top-1 agreement (as the zoo measures them), the op that loses most by TFLite's
  quantization debugger (``debug_layers=True``: each op against its float copy on the same
  inputs), and three float-only probes that separate the converter from the network:
  the SQNR of the Keras model's outputs with only its weights rounded per channel to int8
  (no activation quantization), with Gaussian noise 40 dB below the standard deviation
  of the input pixels added to its input, and the mean largest softmax probability. The
  same probes run on the trained MobileNetV2 of :mod:`bench.mobilenetv2` where its cache
  exists, and MobileNetV2 is also quantized with 16 and with 128 calibration samples.

The quick form (the test suite) runs the pruning timing, structured pruning and the float
probes on MobileNet (alpha 0.25) in this process, with no conversion.

Example:

>>> python -m bench --only zoo-speed --out /tmp/zoo-speed.md      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import Section, table

BIG = "ResNet50"  # the 25M-parameter model of the speed and memory targets
STRUCTURED = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0",
              "DenseNet121", "ResNet50", "VGG16", "Xception")
# The families whose int8 TFLite cell docs/models.md shows below 20 dB or flagged before
# the store existed (flagged_families() reads the store itself).
FLAGGED = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "ResNet50", "ResNet50V2",
           "InceptionV3", "NASNetMobile")
QUICK = "MobileNet"
SAMPLES = 16  # the zoo's calibration and verification samples
MORE_SAMPLES = 128  # the calibration comparison on MobileNetV2
LATENCY_RUNS = 100  # per median; three medians per artifact, alternating
INPUT_SQNR_DB = 40.0  # the input perturbation of the sensitivity probe
CHILD_TIMEOUT = 900  # seconds per child process
ROOT = Path(__file__).resolve().parents[2]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def flagged_families(store: Path | None = None) -> tuple:
    """The ``keras.applications`` families whose int8 TFLite cell in the coverage table
    (``docs/models.json``) is below 20 dB SQNR or flagged, in table order; the families of
    :data:`FLAGGED` where the store is missing or unreadable.

    >>> "MobileNetV2" in flagged_families()
    True
    """
    import re

    from compress.models import APPLICATIONS

    store = store or ROOT / "docs" / "models.json"
    try:
        rows = json.loads(store.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return FLAGGED
    out = []
    for name in sorted(rows):
        cell = rows[name].get("cells", {}).get("int8 TFLite", {}).get("cell", "")
        db = re.search(r"SQNR (-?[\d.]+) dB", cell)
        if name in APPLICATIONS and db and (float(db.group(1)) < 20 or "flagged" in cell):
            out.append(name)
    return tuple(out) or FLAGGED


def _built(name: str, work: Path, seed: int, calibrated: bool = True):
    """The family saved to ``work`` and loaded back, and its photo data set."""
    from bench.cases.zoo import _photos
    from compress import io
    from compress.data import load_data, prepare
    from compress.models import APPLICATIONS, application

    side = APPLICATIONS[name][0]
    n = 2 * MORE_SAMPLES + SAMPLES
    npz = work / f"photos{side}-{n}.npz"
    x = _photos(side, n, seed)
    if not npz.exists():
        np.savez(npz, x_train=x[:2 * MORE_SAMPLES], x_test=x[2 * MORE_SAMPLES:])
    model = application(name, side, calibration=x[:2 * SAMPLES] if calibrated else None)
    path = work / f"{name}-speed.keras"
    model.save(path)
    model = io.load_model(path)
    return model, prepare(model, load_data(f"npz:{npz}", seed)), path


def prune_timing(name: str, work: Path, seed: int = 0, repeats: int = 2) -> dict:
    """Best-of-``repeats`` seconds of load, save and data-free magnitude pruning to 50%."""
    from compress import io
    from compress.models import application
    from compress.pruning import prune

    path = work / f"{name}-timing.keras"
    application(name).save(path)
    times = {"load": [], "save": [], "prune": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = io.load_model(path)
        times["load"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.save(work / f"{name}-timing-copy.keras")
        times["save"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, info = prune(model, None, sparsity=0.5)
        times["prune"].append(time.perf_counter() - t0)
    out = {k: min(v) for k, v in times.items()}
    out.update(params=int(model.count_params()), sparsity=info["sparsity_reached"],
               file_mb=path.stat().st_size / 2**20)
    return out


def prune_export_memory(name: str, work: Path, seed: int = 0) -> dict:
    """Peak memory of a process that loads ``name``, prunes it (no data) and exports a
    verified float TFLite file."""
    from compress import io
    from compress.export import export_artifact
    from compress.models import application
    from compress.pruning import prune

    path = work / f"{name}-memory.keras"
    application(name).save(path)
    start = peak_rss_mb()
    t0 = time.perf_counter()
    model = io.load_model(path)
    pruned, _ = prune(model, None, sparsity=0.5)
    content, check = export_artifact(pruned, None, format="tflite", samples=SAMPLES)
    return {"params": int(model.count_params()), "seconds": time.perf_counter() - t0,
            "rss_before_mb": start, "peak_rss_mb": peak_rss_mb(), "tflite_mb":
            len(content) / 2**20, "max_abs_diff": check["max_abs_diff"]}


def structured_latency(name: str, work: Path, seed: int = 0, runs: int = LATENCY_RUNS,
                       rounds: int = 3, model=None, ds=None) -> dict:
    """Structured 50%: parameters, output shape and float TFLite batch-1 latency (one
    thread) before and after; ``runs=0`` skips the exports and the latency."""
    from compress.export import export_artifact
    from compress.pruning import prune
    from compress.runtime import runtime_latency_ms

    if model is None:
        model, ds, _ = _built(name, work, seed)
    small, info = prune(model, ds, sparsity=0.5, structured=True)
    out = {"params_before": int(model.count_params()), "params_after": int(small.count_params()),
           "shape_before": list(model.output.shape[1:]), "shape_after":
           list(small.output.shape[1:]),
           "kept_whole": sum(len(v) for v in info.get("not_pruned", {}).values())}
    if not runs:
        return out
    shape = tuple(model.inputs[0].shape[1:])
    # The parity check of these exports is the zoo's; here a looser atol keeps a random
    # ResNet50 (1.4e-4 from Keras on photos) in the latency table, its diff shown.
    exported = [export_artifact(m, ds, format="tflite", samples=SAMPLES, atol=1e-3)
                for m in (model, small)]
    files = [content for content, _ in exported]
    medians = [[], []]
    for _ in range(rounds):  # alternate, so that a slow spell of the machine hits both
        for i, content in enumerate(files):
            medians[i].append(runtime_latency_ms(content, shape, threads=1, runs=runs))
    out.update(latency_before_ms=min(medians[0]), latency_after_ms=min(medians[1]),
               max_abs_diff=max(check["max_abs_diff"] for _, check in exported),
               tflite_before_mb=len(files[0]) / 2**20, tflite_after_mb=len(files[1]) / 2**20)
    return out


def rounded_weights(model):
    """A copy of ``model`` with every kernel rounded per output channel to the symmetric
    int8 grid TFLite uses (``max|w_c| / 127``); activations stay float."""
    from compress import training
    from compress.models import _leaves

    copy = training.copy_model(model)
    for layer in _leaves(copy):
        depthwise = type(layer).__name__.startswith("Depthwise")
        for attr in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            var = getattr(layer, attr, None)
            if var is None:
                continue
            w = np.asarray(var)
            # depthwise: one scale per (input channel, multiplier); else per output channel
            keep = 2 if depthwise or attr == "depthwise_kernel" else 1
            scale = np.abs(w).max(axis=tuple(range(w.ndim - keep)), keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            var.assign(np.round(w / scale) * scale)
    return copy


def float_probes(model, x: np.ndarray, seed: int = 0) -> dict:
    """Float-only sensitivity of ``model`` on ``x`` (see module doc)."""
    from compress.agreement import sqnr_db, top1_agreement
    from compress.training import predict

    ref = np.asarray(predict(model, x), np.float64)
    rng = np.random.default_rng(seed)
    spread = float(np.std(x, dtype=np.float64))  # of the pixels, not their mean level
    noisy = x + rng.normal(0, spread * 10 ** (-INPUT_SQNR_DB / 20), x.shape).astype(x.dtype)
    got_noise = np.asarray(predict(model, noisy), np.float64)
    got_weights = np.asarray(predict(rounded_weights(model), x), np.float64)
    # how much of the output depends on the input: variance across inputs over power
    between = float(np.sum(ref.var(axis=0)) / np.mean(np.sum(ref ** 2, axis=1)))
    return {"weights_int8_sqnr_db": sqnr_db(got_weights, ref),
            "weights_int8_top1": top1_agreement(got_weights, ref),
            "input_noise_sqnr_db": sqnr_db(got_noise, ref),
            "input_noise_top1": top1_agreement(got_noise, ref),
            "max_prob": float(ref.max(axis=1).mean()),
            "input_share": between}


def int8_quality(model, ds, samples: int = SAMPLES, debug: bool = True,
                 fmt: str = "tflite", calibration: str = "minmax") -> dict:
    """The int8 artifact's output SQNR and top-1 against Keras, and its worst op."""
    from compress.quantization import quantize

    opts = {"calibration": calibration} if fmt == "onnx" else {"debug_layers": debug}
    _, info = quantize(model, ds, mode="int8", format=fmt, latency=False,
                       calibration_samples=samples, **opts)
    out = {"sqnr_db": info.get("sqnr_db"), "top1": info.get("top1_agreement"),
           "verified": info.get("verified")}
    layers = info.get("layer_sqnr", {}).get("layers", [])
    if layers:
        worst = layers[0]
        out.update(worst_layer=worst["layer"], worst_op=worst["op"],
                   worst_sqnr_db=worst["sqnr_db"], ops=len(layers),
                   ops_below_20=sum(r["sqnr_db"] < 20 for r in layers),
                   median_op_sqnr_db=float(np.median([r["sqnr_db"] for r in layers])))
    return out


def family(name: str, work: Path, seed: int = 0, parts: tuple = ("structured", "int8")
           ) -> dict:
    """Every measurement ``parts`` asks for on one family (a child process runs it)."""
    from compress.training import set_seed

    set_seed(seed)  # the random weights: the same family gets the same numbers each run
    if name == "trained MobileNetV2":
        from bench.mobilenetv2 import trained_mobilenetv2

        model, ds = trained_mobilenetv2()
    elif "timing" in parts or "memory" in parts:
        return (prune_timing if "timing" in parts else prune_export_memory)(name, work, seed)
    else:
        model, ds, _ = _built(name, work, seed)
    x = np.asarray(ds.x_test[:SAMPLES if name != "trained MobileNetV2" else 256])
    runs = {
        "structured": lambda: structured_latency(name, work, seed, model=model, ds=ds),
        "int8": lambda: int8_quality(model, ds),
        "probes": lambda: float_probes(model, x, seed),
        "calibration": lambda: {
            **{f"tflite {n}": int8_quality(model, ds, n, debug=False)
               for n in (SAMPLES, MORE_SAMPLES)},
            **{f"onnx {c} {MORE_SAMPLES}": int8_quality(model, ds, MORE_SAMPLES, fmt="onnx",
                                                        calibration=c)
               for c in ("minmax", "percentile")}}}
    out = {}
    for part in parts + (("probes",) if "int8" in parts else ()):
        try:  # one part failing leaves the others measured
            out[part] = runs[part]()
        except Exception as exc:  # noqa: BLE001 - reported in the table, one line
            out[part] = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:200]}
    return out


def _in_child(name: str, work: Path, seed: int, parts: tuple) -> dict:
    """:func:`family` in a fresh process; ``{"error": ...}`` when it fails."""
    out = work / f"{name.replace(' ', '-')}-{'-'.join(parts)}.json"
    out.unlink(missing_ok=True)
    code = ("import json, sys; from pathlib import Path; "
            "from compress.quiet import import_tensorflow; import_tensorflow(); "
            "from bench.cases.zoo_speed import family; "
            f"r = family({name!r}, Path({str(work)!r}), {seed}, {parts!r}); "
            f"Path({str(out)!r}).write_text(json.dumps(r))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, check=False, timeout=CHILD_TIMEOUT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return {"error": f"over {CHILD_TIMEOUT} s"}
    if out.exists():
        return json.loads(out.read_text())
    tail = " ".join(proc.stderr.split()[-30:])
    return {"error": f"exit {proc.returncode}: {tail[-300:]}"}


def _db(v) -> str:
    return "n/a" if v is None else f"{v:.1f} dB"


def case_zoo_speed(ctx) -> Section:
    sec = Section("Model zoo: pruning speed and memory, structured latency, int8 per layer",
                  issue="#19")
    work = ctx.work_dir / "zoo-speed"
    work.mkdir(parents=True, exist_ok=True)
    if ctx.quick:
        return _quick(ctx, sec, work)

    # A partial run: ZOO_SPEED_PARTS=int8 (of speed, structured, int8) and ZOO_FAMILIES=a,b
    # (the int8 families) measure only those; the section then holds only them.
    parts = os.environ.get("ZOO_SPEED_PARTS", "speed,structured,int8").split(",")
    flagged = flagged_families()
    if os.environ.get("ZOO_FAMILIES"):
        flagged = tuple(n for n in flagged if n in os.environ["ZOO_FAMILIES"].split(","))
    structured = STRUCTURED if "structured" in parts else ()
    flagged = flagged if "int8" in parts else ()
    if "speed" in parts:
        timing = _in_child(BIG, work, ctx.seed, ("timing",))
        memory = _in_child(BIG, work, ctx.seed, ("memory",))
        _speed_part(sec, BIG, timing, memory)

    results = {}
    for name in dict.fromkeys(structured + flagged):
        want = tuple(p for p, fams in (("structured", structured), ("int8", flagged))
                     if name in fams) + (("calibration",) if name == "MobileNetV2" and
                                         "int8" in parts else ())
        results[name] = _in_child(name, work, ctx.seed, want)
    from bench.mobilenetv2 import CACHE_DIR, _paths

    if flagged and all(p.exists() for p in _paths(False, CACHE_DIR)):
        results["trained MobileNetV2"] = _in_child("trained MobileNetV2", work, ctx.seed,
                                                   ("int8",))
    if structured:
        _structured_part(sec, {n: results[n] for n in structured})
    if flagged:
        _int8_part(sec, results, flagged)
    return sec


def _quick(ctx, sec: Section, work: Path) -> Section:
    """MobileNet in this process: timing, structured parameters, float probes."""
    t = prune_timing(QUICK, work, ctx.seed, repeats=1)
    _speed_part(sec, QUICK, t, None)
    model, ds, _ = _built(QUICK, work, ctx.seed)
    s = structured_latency(QUICK, work, ctx.seed, runs=0, model=model, ds=ds)
    _structured_part(sec, {QUICK: {"structured": s}})
    p = float_probes(model, np.asarray(ds.x_test[:SAMPLES]), ctx.seed)
    _int8_part(sec, {QUICK: {"probes": p}}, FLAGGED)
    return sec


def _speed_part(sec: Section, name: str, t: dict, m: dict | None) -> None:
    if "error" in t:
        sec.add(f"{name} pruning timing failed: `{t['error']}`")
        sec.target(f"{name} one-shot magnitude prune (no data) <= 3x load + save",
                   "failed", "<= 3x", False)
    else:
        ratio = t["prune"] / (t["load"] + t["save"])
        sec.add(f"**{name}** ({t['params']:,} parameters, `.keras` file {t['file_mb']:.0f} "
                f"MB), best of the repeats in one process: load {t['load']:.2f} s, save "
                f"{t['save']:.2f} s, one-shot magnitude pruning to 50% without data "
                f"{t['prune']:.2f} s (sparsity {t['sparsity']:.2f}): "
                f"{ratio:.2f}x load + save.")
        sec.target(f"{name} one-shot magnitude prune (no data) <= 3x load + save",
                   f"{ratio:.2f}x", "<= 3x", ratio <= 3)
    if m is None:
        return
    if "error" in m:
        sec.add(f"{name} memory run failed: `{m['error']}`")
        sec.target(f"peak memory of loading, pruning and exporting {name} <= 4 GB", "failed",
                   "<= 4096 MiB", False)
        return
    sec.add(f"A fresh process that loads {name}, prunes it (no data) and exports a float "
            f"TFLite file verified in LiteRT (max abs diff {m['max_abs_diff']:.0e}, "
            f"{m['tflite_mb']:.0f} MB) in {m['seconds']:.0f} s: peak resident memory "
            f"{m['peak_rss_mb']:,.0f} MiB ({m['rss_before_mb']:,.0f} MiB after importing "
            "TensorFlow).")
    sec.target(f"peak memory of loading, pruning and exporting {name} "
               f"({m['params'] / 1e6:.1f}M params) <= 4 GB",
               f"{m['peak_rss_mb']:,.0f} MiB", "<= 4096 MiB", m["peak_rss_mb"] <= 4096)


def _structured_part(sec: Section, results: dict) -> None:
    rows, down, faster, shapes, failed = [], [], 0, True, []
    timed = 0
    for name, r in results.items():
        s = r.get("structured", r)
        if "error" in s:
            failed.append(name)
            rows.append([name, f"failed: {s['error'][:160]}", "", "", "", ""])
            continue
        drop = 1 - s["params_after"] / s["params_before"]
        down.append(drop)
        shapes &= s["shape_before"] == s["shape_after"]
        lat = ""
        if "latency_before_ms" in s:
            timed += 1
            ratio = s["latency_after_ms"] / s["latency_before_ms"]
            faster += ratio < 1
            lat = (f"{s['latency_before_ms']:.3f} -> {s['latency_after_ms']:.3f} ms "
                   f"({ratio:.2f}x; diff {s['max_abs_diff']:.0e})")
        rows.append([name, f"{s['params_before']:,} -> {s['params_after']:,}",
                     f"-{drop:.0%}", "same" if s["shape_before"] == s["shape_after"] else
                     f"**{s['shape_before']} -> {s['shape_after']}**", s["kept_whole"], lat])
    sec.add("Structured pruning, 50% of the units of every prunable layer "
            "(`prune(model, ds, sparsity=0.5, structured=True)`), BatchNorm statistics from "
            "photo patches; float TFLite batch-1 latency in LiteRT, one thread, the least "
            f"of three alternating medians of {LATENCY_RUNS} calls ('diff': the larger max "
            "abs difference of the two files from Keras on the photos).")
    sec.add(table(["family", "parameters", "change", "output shape", "kept whole",
                   "float TFLite latency"], rows))
    sec.target("structured 50%: parameters down >= 35% on every family",
               (f"least {min(down):.0%}" if down else "none measured")
               + (f", {len(failed)} failed" if failed else ""),
               ">= 35%", bool(down) and min(down) >= 0.35 and not failed)
    sec.target("structured 50%: output shape unchanged on every family",
               "yes" if shapes and not failed else "no", "yes", shapes and not failed)
    if timed:
        sec.target("structured 50%: float TFLite batch-1 latency down on >= 5 families",
                   f"{faster} of {timed}", ">= 5", faster >= 5)


def _int8_part(sec: Section, results: dict, flagged: tuple) -> None:
    rows, explained, passed = [], 0, []
    cases = [n for n, r in results.items() if "probes" in r or "int8" in r or
             ("error" in r and n in flagged)]
    for name in cases:
        r = results[name]
        q, p = r.get("int8", {}), r.get("probes", r)
        errors = [d["error"] for d in (r, q, p) if "error" in d]
        if errors:
            rows.append([name, f"failed: {errors[0][:160]}"] + [""] * 6)
            continue
        worst = (f"`{q['worst_layer']}` ({q['worst_op']}) {q['worst_sqnr_db']:.1f} dB; "
                 f"{q['ops_below_20']} of {q['ops']} ops < 20 dB, median "
                 f"{q['median_op_sqnr_db']:.0f} dB" if "worst_layer" in q else "not run")
        # Explained: the worst op is named, and the float network itself turns a small
        # error into a large one (weights-only rounding or a 40 dB input perturbation
        # already reach the output below 20 dB), so no converter fix can reach 20 dB.
        if name in flagged and q.get("sqnr_db") is not None and (q["sqnr_db"] >= 20 or (
                "worst_layer" in q and min(p["weights_int8_sqnr_db"],
                                           p["input_noise_sqnr_db"]) < 20)):
            explained += 1
        if q.get("sqnr_db") is not None and name in flagged:
            passed.append(q["sqnr_db"] >= 20)
        top1 = f", top-1 {q['top1']:.0%}" if q.get("top1") is not None else ""
        rows.append([name, _db(q.get("sqnr_db")) + top1 if q else "not run", worst,
                     f"{_db(p['weights_int8_sqnr_db'])}, top-1 {p['weights_int8_top1']:.0%}",
                     f"{_db(p['input_noise_sqnr_db'])}, top-1 {p['input_noise_top1']:.0%}",
                     f"{p['max_prob']:.2f}", f"{p['input_share']:.3f}"])
    sec.add("Int8 per-channel TFLite on every keras.applications family whose int8 cell "
            "docs/models.md shows below 20 dB or flags, "
            f"{SAMPLES} calibration samples (as the zoo): the artifact's output SQNR against "
            "Keras, the op that loses most by TFLite's quantization debugger (its own error "
            "on the same inputs), and float-only probes of the Keras model: outputs with only "
            "the weights rounded per channel to int8, outputs with Gaussian noise "
            f"{INPUT_SQNR_DB:.0f} dB below the pixels' standard deviation added to the input, "
            "the mean largest softmax probability, and the share of the output power that "
            "varies across inputs.")
    sec.add(table(["model", "int8 TFLite output", "worst op (debugger)",
                   "weights-only int8 (Keras)", f"input noise at {INPUT_SQNR_DB:.0f} dB",
                   "mean max prob", "input-dependent share"], rows))
    cal = next((r["calibration"] for r in results.values() if "calibration" in r), None)
    if cal:
        sec.add("MobileNetV2 int8 with more calibration samples: " + "; ".join(
            f"{k}: {_db(v['sqnr_db'])}" + (f" top-1 {v['top1']:.0%}" if v.get("top1")
                                          is not None else "") for k, v in cal.items()) + ".")
    flagged = [n for n in cases if n in flagged]
    if any("int8" in results[n] or "error" in results[n] for n in flagged):
        worst = [results[n]["int8"]["worst_sqnr_db"] for n in flagged
                 if "worst_sqnr_db" in results[n].get("int8", {})]
        trained = results.get("trained MobileNetV2", {}).get("int8", {}).get("sqnr_db")
        sec.add(f"Int8 output SQNR >= 20 dB here on {sum(passed)} of {len(flagged)} of these "
                "random-weight families" + (f"; the trained MobileNetV2: {trained:.1f} dB"
                                            if trained is not None else "") + "."
                + (f" The debugger's worst op per family: {min(worst):.1f} to "
                   f"{max(worst):.1f} dB." if worst else ""))
        sec.target("int8 per-channel TFLite output SQNR >= 20 dB on every family the coverage "
                   "table shows below it, or the per-layer report explains which layer and "
                   "why (worst op named by the debugger, and the float network's own "
                   f"sensitivity, weights-only int8 or {INPUT_SQNR_DB:.0f} dB input noise, "
                   "below 20 dB at the output)",
                   f"{sum(passed)} of {len(flagged)} >= 20 dB, {explained - sum(passed)} "
                   "explained", f"{len(flagged)} of {len(flagged)}",
                   explained == len(flagged))


# 15-20 minutes on 2 cores (int8 conversions with the debugger, ResNet50 twice): a part of
# its own like the zoo (`python -m bench --only zoo-speed`); quick runs include it.
case_zoo_speed.separate = True
CASES = {"zoo-speed": case_zoo_speed}
