"""What a model costs and how well it does: the base of every command's output.

A report is a plain ``dict`` (JSON-ready): parameters, nonzero parameters, per-layer
sparsity, saved and zip-compressed file size (what a deployment ships), the model's own
task scores on a split (:mod:`compress.task`: accuracy for a classifier, MSE and MAE for a
regression, never an accuracy that means nothing), and batch-1 latency. :func:`print_table` shows several side by side (before vs
after), :func:`plot_reports` draws them.

Example:

>>> from compress.models import build
>>> from compress.report import model_report
>>> r = model_report(build("lenet300"), latency=False)
>>> r["params"], r["nonzero"] == r["params"]
(266610, False)
"""

from __future__ import annotations

import io as _io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def leaf_layers(model, _seen=None) -> list:
    """Every layer that owns weights, inside nested models too, in order; a layer used in
    two places (a CausalLM's head reuses its backbone's token embedding) once."""
    out, seen = [], set() if _seen is None else _seen
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and layer is not model:
            out.extend(leaf_layers(layer, seen))
        elif layer.weights and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def count_params(model) -> int:
    """All parameters (trainable and not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def count_nonzero(model) -> int:
    """Parameters that are not exactly zero. Integer variables wider than a byte are
    bookkeeping (a Normalization layer's sample ``count``, a dropout seed), never pruned
    weights: they count as nonzero whatever they hold, so an untouched model reads 0%
    sparse. Float weights and 8-bit codes (a Keras int8/int4 kernel) are counted."""
    return int(sum(_nonzero(w) for w in model.weights))


def _nonzero(weight) -> int:
    value = np.asarray(weight)
    if value.dtype.kind in "iub" and value.dtype.itemsize > 1:
        return int(value.size)  # a counter or a seed, not a weight
    return int(np.count_nonzero(value))


def layer_sparsity(model) -> list[dict]:
    """Per-layer rows: name, type, parameters, nonzeros and sparsity of its weights."""
    rows = []
    for layer in leaf_layers(model):
        params = sum(int(np.prod(w.shape)) for w in layer.weights)
        nonzero = sum(_nonzero(w) for w in layer.weights)
        rows.append({"layer": layer.name, "type": type(layer).__name__, "params": params,
                     "nonzero": nonzero, "sparsity": 1.0 - nonzero / params if params else 0.0})
    return rows


def finite_json(value, indent: int | None = 2) -> str:
    """``value`` as strict JSON: a number that is not finite (the SQNR of an exact match is
    infinite; a diverged loss is NaN) is written ``null``, since JSON has no Infinity or
    NaN and strict parsers (JavaScript, Go, ``jq``'s numbers) refuse or distort them.
    NumPy scalars and arrays become numbers and lists; anything else unknown, its text.

    >>> finite_json({"sqnr_db": float("inf"), "max_abs_diff": 0.0}, indent=None)
    '{"sqnr_db": null, "max_abs_diff": 0.0}'
    """
    import json
    import math

    def plain(v):
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k if isinstance(k, str) else str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (str, int, bool)):
            return v
        return str(v)

    return json.dumps(plain(value), indent=indent, allow_nan=False)


def zipped_size(path: str | os.PathLike) -> int:
    """Bytes of ``path`` after DEFLATE at level 9: the size a deployment downloads.

    The file is stored under one fixed name, so the size depends on its bytes alone: the
    same artifact measures the same wherever it lies (a temporary file while ``quantize``
    reports, the output file in ``inspect``).
    """
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(path, arcname="model" + Path(path).suffix.encode("ascii", "replace")
                 .decode("ascii")[:16])
    return len(buf.getvalue())


def saved_size(model, suffix: str = ".keras") -> tuple[int, int]:
    """``(raw, zipped)`` bytes of the model saved as ``suffix`` (``.keras`` or ``.h5``), the
    way the toolkit writes its outputs (:func:`compress.io.save_model`: no optimizer
    state)."""
    from compress.io import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / f"model{suffix}")
        return path.stat().st_size, zipped_size(path)


def latency_ms(fn, x: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time in milliseconds of ``fn(x)`` over ``runs`` calls."""
    for _ in range(warmup):
        fn(x)
    return float(np.median(_call_times(fn, x, runs)) * 1e3)


def _call_times(fn, x, runs: int) -> list[float]:
    """Wall seconds of each of ``runs`` calls ``fn(x)``."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


# /proc/cpuinfo flags of 8-bit dot-product instructions, which make int8 kernels faster
# than float ones: x86 VNNI (AVX-512 or AVX), AMX; ARM dotprod and i8mm.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """The CPU's name, the SIMD features int8 and float kernels depend on, and whether it
    has 8-bit dot-product instructions (``None`` where ``cpuinfo`` cannot be read).

    >>> info = cpu_info()
    >>> sorted(info)
    ['features', 'int8_dot_product', 'name']
    """
    import platform

    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"name": platform.processor() or platform.machine(), "features": [],
                "int8_dot_product": None}
    fields = [line.split(":", 1) for line in text.splitlines() if ":" in line]
    name = next((v.strip() for k, v in fields if k.strip() in ("model name", "Model name",
                                                                 "Hardware")),
                platform.machine())
    flags = set(next((v.split() for k, v in fields if k.strip() in ("flags", "Features")),
                     []))
    wanted = ("avx2", "fma", "avx512f", "neon", "asimd") + INT8_DOT_FLAGS
    return {"name": name, "features": [f for f in wanted if f in flags],
            "int8_dot_product": any(f in flags for f in INT8_DOT_FLAGS)}


#: The size random inputs take on an image axis the model leaves unknown (a fully
#: convolutional model's height and width) in export checks and latencies: 1 made a 3x3
#: convolution see one pixel, a check of almost nothing.
UNKNOWN_SIZE = 32


def concrete_shape(shape, dtype="float32") -> tuple:
    """One sample's ``shape`` (no batch axis) with its unknown sizes filled: image axes
    (a float input of 3 or more axes) with :data:`UNKNOWN_SIZE`, others (a sequence's
    length, whose position table may be short) with 1.

    >>> concrete_shape((None, None, 3)), concrete_shape((None,), "int32")
    ((32, 32, 3), (1,))
    """
    image = len(shape) >= 3 and np.issubdtype(np.dtype(dtype or "float32"), np.floating)
    fill = UNKNOWN_SIZE if image else 1
    return tuple(fill if d is None else int(d) for d in shape)


def keras_latency_ms(model, sample_shape: tuple | None = None, batch: int = 1,
                     runs: int = 50) -> float:
    """Median batch-``batch`` latency of the model's compiled forward pass.

    ``sample_shape`` is one input's shape without the batch axis; by default every input of
    the model gets a random tensor of its own shape and dtype (unknown sizes read as
    :func:`concrete_shape`, as the export checks take them), so models with several inputs
    are timed too.
    """
    return latency_ms(*_keras_timer(model, sample_shape, batch), runs=runs)


def paired_latency_ms(first, second, runs: int = 50, rounds: int = 5) -> tuple[float, float]:
    """Median batch-1 latencies of two models timed in alternating rounds (``first``,
    ``second``, ``first``...), for a before/after ratio: on a machine shared with other
    work, load that comes and goes falls on both alike (timed minutes apart, the same
    unchanged model measured 5.5 ms in one run and 10.2 ms in another).

    Example:

    >>> before_ms, after_ms = paired_latency_ms(model, pruned)   # doctest: +SKIP
    """
    timers = [_keras_timer(first), _keras_timer(second)]
    for fn, x in timers:  # traced and warm before any timing
        for _ in range(5):
            fn(x)
    times = ([], [])
    per = max(1, runs // rounds)
    for _ in range(rounds):
        for (fn, x), out in zip(timers, times):
            out.extend(_call_times(fn, x, per))
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def _keras_timer(model, sample_shape: tuple | None = None, batch: int = 1):
    """``(fn, x)``: the model's compiled forward pass and a random input to time it on."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def sample(shape, dtype="float32"):
        shape = (batch,) + concrete_shape(shape, dtype)
        if dtype == "string":  # a model that takes text: a sentence of nine words
            from compress.data.arrays import SAMPLE_TEXT

            return tf.fill(shape, SAMPLE_TEXT)
        if np.issubdtype(np.dtype(dtype), np.floating):
            return tf.constant(rng.random(shape, dtype=np.float32).astype(dtype))
        return tf.zeros(shape, dtype=dtype)

    if sample_shape is not None:  # the one input's own dtype: strings for a text model
        inputs = getattr(model, "inputs", None) or []
        x = sample(sample_shape, (inputs[0].dtype if len(inputs) == 1 else None)
                   or "float32")
    else:
        import keras

        # in the model's own input structure (a KerasHub model takes a dict of inputs);
        # a Sequential model never called inside another has no ``input``: its ``inputs``
        try:
            structure = model.input
        except AttributeError:
            structure = model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)
        x = keras.tree.map_structure(
            lambda t: sample(t.shape[1:], getattr(t, "dtype", "float32") or "float32"),
            structure)
    call = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    return lambda t: tf.nest.map_structure(lambda o: o.numpy(), call(t)), x


def model_report(model, data=None, split: str = "test", latency: bool = True,
                 name: str | None = None, path: str | os.PathLike | None = None,
                 task=None, reference=None, saved_as: str = ".keras") -> dict:
    """Measure ``model``.

    Args:
        model: a Keras model.
        data: a :class:`compress.data.Dataset` already fitted to the model (see
            ``compress.data.prepare``), anything :func:`compress.data.as_dataset` takes
            (an ``(x, y)`` pair is scored as it is), or None to skip the scores.
        split: str, default ``"test"``. Which split the scores are measured on.
        latency: bool, default True. Measure batch-1 latency (50 runs).
        name: label of the column in tables (default the model's name).
        path: the model's file, if it has one: its size is reported as is; otherwise the
            model is saved without optimizer state (as the toolkit writes models) to a
            temporary file to measure it.
        saved_as: str, default ``".keras"``. Without ``path``, the format it is saved in
            (``.keras`` or ``.h5``): give the output's, to compare like with like.
        task: :class:`compress.task.Task` or None, default None (the model's own:
            :func:`compress.task.resolve`). Give the same one to the reports compared
            side by side.
        reference: keras.Model or None, default None. The original model: with data that
            has no labels, the report gives fidelity to it instead of scores
            (:func:`fidelity`: top-1 agreement for a classifier, relative L2 error,
            SQNR and PSNR for any output).

    Returns:
        A JSON-ready dict.
    """
    if data is not None and not hasattr(data, "labelled"):  # arrays, (x, y), tf.data...
        from compress.data import as_dataset

        data = as_dataset(data, model)
    if path is not None:
        raw, zipped = Path(path).stat().st_size, zipped_size(path)
    else:
        raw, zipped = saved_size(model, saved_as)
    params, nonzero = count_params(model), count_nonzero(model)
    report = {
        "name": name or model.name,
        "params": params,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / params if params else 0.0,
        "file_bytes": raw,
        "zipped_bytes": zipped,
        "layers": layer_sparsity(model),
    }
    if data is not None:
        from compress.task import resolve, sample_targets

        # A stream is scored batch by batch (never read whole); the task is inferred from
        # the head of the split (compress.task.SAMPLE_TARGETS targets at most).
        scored = False
        if data.labelled:
            task = task or resolve(model, y=sample_targets(data, split))
            report.update(task.evaluate_data(model, data, split))
            scored = True
        elif reference is not None:  # no labels: how faithful to the original it stayed
            task = task or resolve(reference)
            report.update(fidelity_data(model, reference, data, split, task.is_classifier))
            scored = True
        if scored:
            report["task"] = task.kind
            report["accuracy_split"] = split
            samples = _split_size(data, split)  # what a score's precision rests on
            if samples is not None:
                report["scored_samples"] = samples
    if latency:
        report["latency_ms"] = keras_latency_ms(model)
    return report


def _split_size(data, split: str) -> int | None:
    try:
        n = data.size(split)
    except Exception:  # noqa: BLE001 - a stream of unknown length
        return None
    return int(n) if n is not None else None


#: Fewer scored samples than this, and a report says how coarse its scores are.
FEW_SAMPLES = 100


def few_samples_note(report: dict) -> str | None:
    """A line when ``report``'s scores rest on fewer than :data:`FEW_SAMPLES` samples (a
    small image folder's held-out tenth), else None.

    >>> few_samples_note({"scored_samples": 6, "accuracy": 0.5, "accuracy_split": "test"})
    'the scores come from only 6 test samples: one sample moves an accuracy by 16.7 pts'
    >>> few_samples_note({"scored_samples": 1000, "accuracy": 0.9}) is None
    True
    """
    n = report.get("scored_samples")
    if not n or n >= FEW_SAMPLES:
        return None
    split = report.get("accuracy_split", "test")
    text = f"the scores come from only {n} {split} sample{'s' if n != 1 else ''}"
    if any(k.endswith(("accuracy", "agreement")) for k in report) or any(
            k.endswith(("accuracy", "agreement")) for k in report.get("metrics") or {}):
        text += f": one sample moves an accuracy by {100 / n:.3g} pts"
    return text


def fidelity(model, reference, x, classifier: bool) -> dict:
    """How closely ``model`` reproduces ``reference`` (the original) on inputs ``x``: the
    label-free report. ``top1_agreement`` for a classifier; for any output the relative
    L2 error, the SQNR and the PSNR (peak: the reference's largest magnitude), in dB.

    Example:

    >>> fidelity(pruned, original, x_test, classifier=True)["top1_agreement"]  # doctest: +SKIP
    0.98
    """
    from compress.agreement import comparison
    from compress.training import predict

    got, expected = predict(model, x), predict(reference, x)
    check = comparison(got, expected, classifier)
    mse = float(np.mean((np.asarray(got, np.float64) - expected) ** 2))
    peak = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    psnr = float("inf") if mse == 0 else (float(10 * np.log10(peak ** 2 / mse))
                                          if np.isfinite(mse) and peak > 0 else float("-inf"))
    out = {"rel_l2_error": check["rel_l2_error"], "sqnr_db": check["sqnr_db"], "psnr_db": psnr}
    if "top1_agreement" in check:
        out["top1_agreement"] = check["top1_agreement"]
    return out


def fidelity_data(model, reference, data, split: str, classifier: bool,
                  batch_size: int = 256) -> dict:
    """:func:`fidelity` on a whole split of ``data``, read batch by batch (sums of squared
    differences, of squared reference outputs and agreeing rows are accumulated: a stream
    is never held in memory).

    Example:

    >>> fidelity_data(pruned, original, stream, "test", classifier=True)  # doctest: +SKIP
    {'rel_l2_error': 0.05, 'sqnr_db': 26.0, 'psnr_db': 31.2, 'top1_agreement': 0.98}
    """
    from compress.data.streaming import iter_batches
    from compress.training import predict

    if len(getattr(reference, "outputs", None) or ()) > 1:  # several outputs: each its own
        from compress.task import fidelity_outputs

        return fidelity_outputs(model, reference, data, split, batch_size)
    diff2 = ref2 = peak = 0.0
    rows = agree = elements = positions = 0
    finite = True
    top1 = classifier
    for x, _ in iter_batches(data, split, batch_size):
        got = np.asarray(predict(model, x), np.float64)
        expected = np.asarray(predict(reference, x), np.float64)
        ok = np.isfinite(got).all() and np.isfinite(expected).all()
        finite = finite and bool(ok)
        if ok:
            diff2 += float(np.sum((got - expected) ** 2))
            ref2 += float(np.sum(expected ** 2))
            peak = max(peak, float(np.max(np.abs(expected))) if expected.size else 0.0)
        top1 = top1 and expected.ndim >= 2 and expected.shape[-1] > 1
        if top1:  # per row; per position (pixel, token) for outputs of classes per position
            good = np.isfinite(got).all(-1) & np.isfinite(expected).all(-1)
            agree += int(np.sum((np.argmax(got, -1) == np.argmax(expected, -1)) & good))
            positions += int(good.size)
        rows += len(got)
        elements += int(got.size)
    if rows == 0:
        from compress.errors import CompressError

        raise CompressError("cannot score a model on empty data")
    if not finite:
        rel, mse = float("inf"), float("inf")
    else:
        rel = 0.0 if diff2 == 0 else (float(np.sqrt(diff2 / ref2)) if ref2 > 0
                                      else float("inf"))
        mse = diff2 / max(elements, 1)
    sqnr = float("inf") if rel == 0 else (float(-20 * np.log10(rel)) if np.isfinite(rel)
                                          else float("-inf"))
    psnr = float("inf") if mse == 0 else (float(10 * np.log10(peak ** 2 / mse))
                                          if np.isfinite(mse) and peak > 0 else float("-inf"))
    out = {"rel_l2_error": rel, "sqnr_db": sqnr, "psnr_db": psnr}
    if top1:
        out["top1_agreement"] = agree / max(positions, 1)
    return out


_ROWS = [
    ("params", "parameters", "{:,}"),
    ("nonzero", "nonzero", "{:,}"),
    ("sparsity", "sparsity", "{:.1%}"),
    ("file_bytes", "file size", "bytes"),
    ("zipped_bytes", "zipped size", "bytes"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("mse", "MSE", "{:.4g}"),
    ("mae", "MAE", "{:.4g}"),
    ("top1_agreement", "top-1 agreement with original", "{:.2%}"),
    ("rel_l2_error", "relative L2 error vs original", "{:.2%}"),
    ("psnr_db", "PSNR vs original", "{:.1f} dB"),
    ("scored_samples", "samples scored", "{:,}"),
    ("latency_ms", "latency b=1 (Keras)", "{:.3f} ms"),
    ("runtime_latency_ms", "latency b=1 (deployed runtime)", "{:.3f} ms"),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "bytes":
        return human_bytes(value)
    return fmt.format(value)


def table_rows(reports: list[dict], extra: list[tuple] = ()) -> list[list[str]]:
    """Rows of ``[metric, value per report..., ratio last/first]`` for the keys present."""
    rows = []
    # The model's own metrics beyond accuracy / MSE / MAE (auc, mape...), by name.
    # A model of several outputs scores each by name ("cls accuracy", "reg mse"): shown
    # and compared as the single-output rows are.
    own = sorted({k for r in reports for k in (r.get("metrics") or {})})
    own_rows = [(f"metrics.{k}", _metric_label(k), _metric_format(k)) for k in own]
    for key, label, fmt in list(_ROWS) + own_rows + list(extra):
        if key.startswith("metrics."):
            values = [(r.get("metrics") or {}).get(key[8:]) for r in reports]
            if all(v is None for v in values):
                continue
            rows.append([label] + [_fmt(v, fmt) for v in values]
                        + ([_metric_change(key[8:], values[0], values[-1])]
                           if len(reports) > 1 else []))
            continue
        values = [r.get(key) for r in reports]
        if all(v is None for v in values):
            continue
        row = [label] + [_fmt(v, fmt) for v in values]
        if len(reports) > 1:
            first, last = values[0], values[-1]
            if key == "runtime_latency_ms":  # artifacts only: the first one that has it
                present = [v for v in values if v is not None]
                first = present[0] if len(present) > 1 else None
            if key in ("file_bytes", "zipped_bytes", "params", "nonzero", "latency_ms",
                       "runtime_latency_ms", "mse", "mae") and \
                    first and last is not None:
                row.append(f"{last / first:.2f}x")
            elif key == "accuracy" and first is not None and last is not None:
                row.append(f"{(last - first) * 100:+.2f} pts")
            else:
                row.append("")
        rows.append(row)
    return rows


def _metric_kind(name: str) -> str | None:
    """``accuracy`` or ``error`` for a metric named after one (``cls accuracy``,
    ``reg mse``), else None (a metric whose direction the table does not assume)."""
    last = name.rsplit(" ", 1)[-1].lower()
    if last.endswith(("accuracy", "agreement")):
        return "accuracy"
    return "error" if last in ("mse", "mae", "rel_l2_error") else None


def _metric_label(name: str) -> str:
    """The row label of a metric: MSE and MAE written as the single-output rows write them.

    >>> _metric_label("reg mse"), _metric_label("cls accuracy"), _metric_label("auc")
    ('reg MSE', 'cls accuracy', 'auc')
    """
    head, _, last = name.rpartition(" ")
    if last.lower() in ("mse", "mae"):
        return f"{head} {last.upper()}".strip()
    return name


def _metric_format(name: str) -> str:
    percent = _metric_kind(name) == "accuracy" or name.endswith("rel_l2_error")
    return "{:.2%}" if percent else "{:.4g}"


def _metric_change(name: str, first, last) -> str:
    if first is None or last is None:
        return ""
    kind = _metric_kind(name)
    if kind == "accuracy":
        return f"{(last - first) * 100:+.2f} pts"
    return f"{last / first:.2f}x" if kind == "error" and first else ""


_SHORT = [("nonzero", "nonzero", "{:,}"), ("zipped_bytes", "zipped", "bytes"),
          ("accuracy", "accuracy", "{:.2%}"), ("mse", "MSE", "{:.4g}"),
          ("latency_ms", "latency b=1", "{:.3f} ms")]


def model_rows(reports: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per report (for many models): name, key metrics, size and quality vs first
    (accuracy in points; for a regressor, which has none, the MSE ratio).

    Example:

    >>> model_rows([{"name": "a", "mse": 0.2}, {"name": "b", "mse": 0.3}])[0]
    ['model', 'nonzero', 'zipped', 'MSE', 'latency b=1', 'zipped vs first', 'MSE vs first']
    """
    present = {k for k, _, _ in _SHORT if any(r.get(k) is not None for r in reports)}
    short = [c for c in _SHORT if c[0] in present or c[0] not in ("mse", "accuracy")]
    quality = "accuracy" if "accuracy" in present else "mse" if "mse" in present else None
    header = ["model"] + [label for _, label, _ in short] + ["zipped vs first"] + (
        [{"accuracy": "acc vs first", "mse": "MSE vs first"}[quality]] if quality else [])
    first = reports[0]
    rows = []
    for r in reports:
        row = [str(r.get("name", ""))] + [_fmt(r.get(k), f) for k, _, f in short]
        row.append(f"{r['zipped_bytes'] / first['zipped_bytes']:.2f}x"
                   if r.get("zipped_bytes") and first.get("zipped_bytes") else "-")
        if quality:
            now, then = r.get(quality), first.get(quality)
            row.append("-" if now is None or then is None else
                       f"{(now - then) * 100:+.2f} pts" if quality == "accuracy" else
                       f"{now / then:.2f}x" if then else "-")
        rows.append(row)
    return header, rows


def print_table(reports: list[dict], title: str | None = None, console=None,
                extra: list[tuple] = ()) -> None:
    """Print reports as a rich table: side by side for up to 3, one row each beyond."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if len(reports) > 3:
        header, rows = model_rows(reports)
        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    table = Table(title=title)
    table.add_column("metric")
    for r in reports:
        table.add_column(str(r.get("name", "")), justify="right")
    if len(reports) > 1:
        table.add_column("change", justify="right")
    for row in table_rows(reports, extra):
        table.add_row(*row)
    console.print(table)


def markdown_table(reports: list[dict], extra: list[tuple] = ()) -> str:
    """The same table as :func:`print_table`, as GitHub Markdown."""
    if len(reports) > 3:
        header, rows = model_rows(reports)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    header = ["metric"] + [str(r.get("name", "")) for r in reports]
    if len(reports) > 1:
        header.append("change")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table_rows(reports, extra):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_reports(reports: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Save a PNG: accuracy against zipped size, one point per report, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["name"] for r in reports]
    sizes = [r["zipped_bytes"] / 1024 for r in reports]
    # A regression has no accuracy: plot its MSE instead of a meaningless line of NaNs.
    key = "accuracy" if any(r.get("accuracy") is not None for r in reports) else "mse"
    scale, label = (100, "test accuracy (%)") if key == "accuracy" else (1, "test MSE")
    accs = [scale * (r.get(key) if r.get(key) is not None else float("nan")) for r in reports]
    ax1.scatter(sizes, accs)
    for n, s, a in zip(names, sizes, accs):
        ax1.annotate(n, (s, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("zipped size (KB, log)")
    ax1.set_ylabel(label)
    ax1.set_title(f"{label.split(' (')[0].replace('test ', '')} vs size")
    ax1.grid(True, alpha=0.3)
    ax2.barh(names, sizes)
    ax2.set_xlabel("zipped size (KB)")
    ax2.set_title("zipped size")
    ax2.invert_yaxis()
    if title:
        fig.suptitle(title)
    return _save_png(fig, path, dpi=110)


def plot_sparsity(reports: list[dict], path: str | os.PathLike,
                  title: str = "per-layer sparsity") -> Path:
    """Save a PNG of each report's per-layer sparsity (reports with a ``layers`` table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r in (r for r in reports if r and r.get("layers")):
        ax.plot([row["layer"] for row in r["layers"]],
                [100 * row["sparsity"] for row in r["layers"]], marker="o", label=r["name"])
    ax.set_ylabel("sparsity (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    return _save_png(fig, path, dpi=100)


def _save_png(fig, path, dpi: int) -> Path:
    """Write a figure atomically (a temporary file beside ``path``, renamed) and close it."""
    import io as bytes_io

    import matplotlib.pyplot as plt

    from compress.io import write_bytes

    fig.tight_layout()
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    # the toolkit's atomic writer: the file gets the mode every other output gets (a
    # NamedTemporaryFile is 0600, so others could not open the plots report.md embeds)
    return write_bytes(path, buffer.getvalue())


def plot_recipe(reports: list[dict], size_path, sparsity_path, title: str = "") -> None:
    """The two plots of a recipe report: accuracy (a regressor's MSE) vs size per step,
    per-layer sparsity."""
    quality = "accuracy" if any(r.get("accuracy") is not None for r in reports) else \
        "MSE" if any(r.get("mse") is not None for r in reports) else "accuracy"
    plot_reports(reports, size_path, title=f"{title}: {quality} vs size per step")
    plot_sparsity(reports, sparsity_path)
