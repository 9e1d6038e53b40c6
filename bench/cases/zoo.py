"""The model zoo (#19): every pass on every zoo case, one row per case in docs/models.md.

The cases: the smallest member of each keras.applications family, built with
``weights=None`` at a reduced input (32x32; Inception 75, Xception 71), its BatchNorm
statistics set from real photographs (patches of scikit-learn's two sample images; a
random EfficientNet otherwise outputs a uniform softmax); three KerasHub models (a BERT
text classifier taking token ids, segment ids and a padding mask, a GPT-2 backbone, a ViT
image classifier) built from small configs with random weights
(:func:`compress.models.kerashub`) and fed random token ids with padded tails (random
images for ViT); and twelve hand-written cases (bench/zoo_models.py): a subclassed model,
a transfer-learning nest, a two-input and a two-output model, a model with a registered
custom layer (loaded through ``--import``), a mixed_float16 model, a recurrent text
classifier, a 1-D convolutional signal classifier, a TimeDistributed video model, a
Siamese model (shared layers), an end-to-end text classifier (string input,
``TextVectorization``) and a tabular model (``StringLookup``, adapted ``Normalization``).
The last two have lookup layers: their TFLite and ONNX cells run with
``without_lookups`` (what the refusal without it names), said in the cell.

Each case is saved, loaded back as a user's file, and run through every pass of
:data:`PASSES`, each verified as the CLI verifies it. A cell is "ok" with its check and
time, or the pass's one-line refusal; anything else is "unexpected".

Each row is kept in ``docs/models.json`` with when and with what it was measured, and
``docs/models.md`` is rendered from all kept rows: a partial run (``ZOO_FAMILIES=a,b``,
and ``ZOO_PASSES=p,q`` for some columns only) updates its own cells and leaves the other
rows as they were. Quick runs (tests/test_bench.py) run :data:`QUICK_PASSES` on
:data:`QUICK` and keep their rows in the work folder.

Example:

>>> python -m bench --only zoo --out /tmp/zoo.md      # doctest: +SKIP
>>> ZOO_FAMILIES=MobileNet,TwoInput python -m bench --only zoo --out /tmp/zoo.md  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Section, table

PASSES = ("inspect", "prune magnitude", "prune OBD", "prune 2:4", "prune block",
          "structured prune", "k-means share", "hash share", "int8 TFLite", "int8 ONNX",
          "dynamic TFLite", "float16 TFLite", "keras-int8", "export ONNX", "export TFLite",
          "distill", "QAT")
# the quick run (tests/test_bench.py) stays short: the first columns the zoo had, but
# int8 TFLite (12 s of the 33; tests/test_quant_zoo.py converts zoo shapes to int8 TFLite)
QUICK_PASSES = ("inspect", "prune magnitude", "structured prune", "k-means share",
                "int8 ONNX", "export ONNX", "export TFLite")
QUICK = ("MobileNet",)  # alpha 0.25
SAMPLES = 16  # calibration and verification inputs: enough to run every check
EPOCHS = 1  # of the passes that train (hash share, distill, QAT): the check, not accuracy
BLOCK = 4  # prune block: runs of 4 consecutive inputs of one unit
# Cheapest first: a run cut short still covers most cases. Each case runs in its own
# process (a 55M-parameter model's memory is returned before the next one is built).
ORDER = ("Subclassed", "TwoInput", "TwoOutput", "CustomLayer", "MixedFloat16",
         "TextRNN", "Signal1D", "Video", "Siamese", "TextVectorize", "Tabular",
         "TransferNest", "MobileNet", "MobileNetV3Small", "MobileNetV2",
         "BertTextClassifier", "GPT2Backbone", "LlamaBackbone", "ViTImageClassifier",
         "MobileNetV3Large",
         "EfficientNetB0", "EfficientNetV2B0", "NASNetMobile", "DenseNet121", "ResNet50V2",
         "ResNet50", "VGG16", "InceptionV3", "Xception", "ConvNeXtTiny", "InceptionResNetV2")
FAMILY_TIMEOUT = 1800  # seconds per case
ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "docs" / "models.json"  # the kept rows (docs/models.md is rendered from it)


def _photos(side: int, n: int, seed: int):
    """``n`` ``side`` x ``side`` RGB patches (0-255) of the two sample photographs."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = load_sample_images().images
    crop = min(side * 3, 420)
    out = []
    for _ in range(n):
        im = images[rng.integers(2)]
        y, x = rng.integers(0, im.shape[0] - crop), rng.integers(0, im.shape[1] - crop)
        patch = im[y:y + crop, x:x + crop].astype("float32")
        step = crop / side
        idx = (np.arange(side) * step).astype(int)
        out.append(patch[idx][:, idx])
    return np.stack(out)


def _cell(fn):
    """Run one pass: ``("ok ...", seconds)`` or the refusal / unexpected error, one line."""
    from compress.errors import CompressError

    t0 = time.perf_counter()
    try:
        detail = fn()
    except CompressError as exc:
        return "refused: " + " ".join(str(exc).split())[:400], time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - what the table exists to show
        text = " ".join(str(exc).split())[:120]
        return f"unexpected {type(exc).__name__}: {text}", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    return f"ok{', ' + detail if detail else ''}, {seconds:.1f} s", seconds



def _agreement(info: dict) -> str:
    parts = []
    if "sqnr_db" in info:
        parts.append(f"SQNR {info['sqnr_db']:.1f} dB")
    if "top1_agreement" in info:
        parts.append(f"top-1 {info['top1_agreement']:.0%}")
    if info.get("verified") is False:
        parts.append("**flagged**")
    return " ".join(parts)


def _load_case(name: str, work: Path, seed: int):
    """``(model, dataset)``: the case built, saved, loaded back as a user's file (its
    ``--import`` module first, a subclassed model given the data's sample shape)."""
    import numpy as np

    from bench import zoo_models
    from compress import io
    from compress.data import load_data, prepare
    from compress.models import APPLICATIONS, KERASHUB, application

    imports = []
    if name in zoo_models.CASES:
        model, npz, imports = zoo_models.CASES[name][1](work, seed)
    elif name in KERASHUB:
        model, npz = _kerashub(name, work, seed)
    else:
        side = APPLICATIONS[name][0]
        x = _photos(side, 3 * SAMPLES, seed)
        npz = work / f"photos{side}.npz"
        if not npz.exists():
            np.savez(npz, x_train=x[:2 * SAMPLES], x_test=x[2 * SAMPLES:])
        model = application(name, side, calibration=x[:2 * SAMPLES])
    path = work / f"{name}.keras"
    model.save(path)
    if imports:  # the registered classes are forgotten: only --import brings them back
        zoo_models.forget_user_classes()
        io.import_modules(imports)
    model = io.load_model(path)  # as a user's file: saved, then loaded back
    raw = load_data(f"npz:{npz}", seed)
    sample = getattr(raw.x_train, "shape", None)
    model, _ = io.with_input_signature(model, None, sample and tuple(sample[1:]),
                                       where=str(path))
    return model, prepare(model, raw)


def family_row(name: str, work: Path, seed: int = 0, out: Path | None = None,
               passes=PASSES) -> dict:
    """The cells of one case, ``{pass: cell}``: build, then each of ``passes`` (a pass
    never mutates its input).

    With ``out``, the cells so far are written there as JSON after each pass."""
    from compress.export import export_artifact
    from compress.pruning import prune
    from compress.quantization import quantize
    from compress.report import model_report
    from compress.sharing import share

    try:
        model, ds = _load_case(name, work, seed)
    except Exception as exc:  # noqa: BLE001 - a case that does not build is one row
        cells = {p: f"does not build: {' '.join(str(exc).split())[:120]}" for p in passes}
        if out is not None:
            out.write_text(json.dumps(cells))
        return cells

    def inspect():
        report = model_report(model, ds, latency=False, name=name)
        return f"{report['params']:,} params" if "params" in report else ""

    def pruned(**options):
        def run():
            _, info = prune(model, ds, sparsity=0.5, **options)
            return f"sparsity {info.get('sparsity_reached', 0.5):.2f}"
        return run

    def same_outputs(small):
        before, after = ([tuple(t.shape) for t in m.outputs] for m in (model, small))
        if before != after:
            raise AssertionError(f"output shapes {after} != {before}")

    def structured():
        small, info = prune(model, ds, sparsity=0.5, structured=True)
        same_outputs(small)
        kept = sum(len(v) for v in info.get("not_pruned", {}).values())
        heads = info.get("heads", {})
        return (f"params {info['params_after'] / info['params_before']:.0%}"
                + (f", heads {sum(b for b, _ in heads.values())} -> "
                   f"{sum(a for _, a in heads.values())}" if heads else "")
                + (f", {kept} kept whole" if kept else ""))

    def kmeans():
        share(model, ds, method="kmeans", clusters=16)
        return ""

    def hashed():
        small, info = share(model, ds, method="hash", epochs=EPOCHS, batch_size=SAMPLES)
        same_outputs(small)
        return (f"{len(info['layers'])} layers hashed, params "
                f"{info['stored_params'] / info['dense_params']:.0%}")

    # A model that takes strings becomes an artifact from its lookup layers' outputs on
    # (--without-lookups, which the refusal without it names); the cell says so.
    from compress.layer_state import all_layers
    from compress.runtime import LOOKUP_LAYERS

    lookups = any(type(la).__name__ in LOOKUP_LAYERS for la in all_layers(model))
    after = " (without lookups)" if lookups else ""

    def quantized(fmt, mode="int8", **options):
        def run():
            if fmt != "keras" and lookups:
                options["without_lookups"] = True
            _, info = quantize(model, ds, mode=mode, format=fmt, latency=False,
                               calibration_samples=SAMPLES, **options)
            return _agreement(info) + (after if fmt != "keras" else "")
        return run

    def exported(fmt):
        def run():
            _, info = export_artifact(model, ds, format=fmt, samples=SAMPLES,
                                      without_lookups=lookups)
            note = (" (copy)" if info.get("export_copy") else "") + after
            exact = info.get("float64_reference")  # Keras's float32 itself off the exact
            if exact:
                modes = exact.get("keras_modes") or {}
                worst = max(modes, key=modes.get) if modes else None
                note += (f"; vs float64: artifact {exact['max_abs_diff']:.0e}, Keras "
                         f"{exact['keras_max_abs_diff']:.0e}"
                         + (f" ({worst})" if worst else "")
                         + (" (within 2x Keras)" if exact.get("rule") == "keras float32"
                            else ""))
            return f"diff {info['max_abs_diff']:.0e}{note}"
        return run

    def distilled():
        # The student of a model no builder shrinks: a structurally pruned copy.
        from compress.distillation import distill
        from compress.distillation.step import pruned_student

        student, source = pruned_student(model, ds)
        trained, info = distill(model, student, ds, epochs=EPOCHS, batch_size=SAMPLES)
        same_outputs(trained)
        kind = "pruned" if source.startswith("structurally") else "width x0.5"
        text = f"{kind} student, params {trained.count_params() / model.count_params():.0%}"
        if "student_accuracy" in info and "teacher_accuracy" in info:
            text += (f", accuracy {info['student_accuracy']:.2f} (teacher "
                     f"{info['teacher_accuracy']:.2f})")
        return text

    runs = {"inspect": inspect, "prune magnitude": pruned(),
            "prune OBD": pruned(method="obd", calibration=SAMPLES),
            "prune 2:4": pruned(two_four=True), "prune block": pruned(block=BLOCK),
            "structured prune": structured, "k-means share": kmeans, "hash share": hashed,
            "int8 TFLite": quantized("tflite"), "int8 ONNX": quantized("onnx"),
            "dynamic TFLite": quantized("tflite", "dynamic"),
            "float16 TFLite": quantized("tflite", "float16"),
            "keras-int8": quantized("keras", "keras-int8"),
            "export ONNX": exported("onnx"), "export TFLite": exported("tflite"),
            "distill": distilled,
            "QAT": quantized("tflite", qat=True, epochs=EPOCHS)}
    cells = {}
    for name_ in passes:
        cells[name_] = _cell(runs[name_])[0]
        if out is not None:
            out.write_text(json.dumps(cells))
    return cells


def _kerashub(name: str, work: Path, seed: int):
    """A small-config KerasHub model and its npz data (random ids or images, labelled for
    the classifiers; input arrays keyed ``x_SPLIT/INPUT``)."""
    import numpy as np

    from compress.models import kerashub, kerashub_inputs

    classes = {"BertTextClassifier": 2, "ViTImageClassifier": 10}.get(name)
    model = kerashub(name, num_classes=classes or 2)
    x = kerashub_inputs(model, 3 * SAMPLES, seed)
    arrays = {}
    for split, part in (("train", slice(0, 2 * SAMPLES)), ("test", slice(2 * SAMPLES, None))):
        if isinstance(x, dict):
            arrays.update({f"x_{split}/{k}": v[part] for k, v in x.items()})
        else:
            arrays[f"x_{split}"] = x[part]
        if classes:
            labels = np.random.default_rng(seed).integers(0, classes, 3 * SAMPLES)
            arrays[f"y_{split}"] = labels[part]
    npz = work / f"{name}.npz"
    np.savez(npz, **arrays)
    return model, npz


def _label(name: str) -> str:
    from bench.zoo_models import CASES
    from compress.models import APPLICATIONS

    if name in CASES:
        return CASES[name][0]
    if name in APPLICATIONS:
        side = APPLICATIONS[name][0]
        return f"{name} ({side}x{side})"
    return f"{name} (KerasHub, small config)"


def _family_in_child(name: str, work: Path, seed: int, passes) -> dict:
    """:func:`family_row` in a child process; a crash or timeout fills the rest."""
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    code = ("import sys; from pathlib import Path; from bench.cases.zoo import family_row; "
            f"family_row({name!r}, Path({str(work)!r}), {seed}, Path({str(out)!r}), "
            f"{tuple(passes)!r})")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              check=False,
                              text=True, timeout=FAMILY_TIMEOUT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        why = (f"crashed: process killed (signal {-proc.returncode}, out of memory?)"
               if proc.returncode < 0 else
               f"crashed: exit {proc.returncode} ({' '.join(proc.stderr.split()[-12:])})")
    except subprocess.TimeoutExpired:
        proc, why = None, f"crashed: over {FAMILY_TIMEOUT} s for the case"
    cells = json.loads(out.read_text()) if out.exists() else {}
    return {p: cells.get(p, why) for p in passes}


def _versions() -> str:
    import importlib.metadata as md

    found = []
    for dist, shown in (("keras", "Keras"), ("tensorflow", "TensorFlow"),
                        ("keras-hub", "KerasHub"), ("onnxruntime", "onnxruntime"),
                        ("tf2onnx", "tf2onnx")):
        try:
            found.append(f"{shown} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(found)


def load_rows(store: Path) -> dict:
    """The kept rows: ``{case: {"cells": {pass: {"cell", "at"}}, "runs": [...]}}``."""
    return json.loads(store.read_text())["rows"] if store.exists() else {}


def save_row(rows: dict, name: str, cells: dict, seconds: float, at: str,
             versions: str) -> None:
    """Put one run's cells into ``rows[name]``; a run of every pass replaces the row."""
    everything = set(cells) >= set(PASSES)
    row = {"cells": {}, "runs": []} if everything or name not in rows else rows[name]
    row["cells"].update({p: {"cell": c, "at": at} for p, c in cells.items()})
    row["runs"] = ([] if everything else row["runs"]) + [
        {"at": at, "passes": "all" if everything else list(cells),
         "seconds": round(seconds, 1), "with": versions}]
    rows[name] = row


def case_zoo(ctx) -> Section:
    from bench.zoo_models import CASES as HAND
    from compress.models import APPLICATIONS, KERASHUB

    sec = Section("Model zoo: every pass on each zoo case", issue="#19")
    work = ctx.work_dir / "zoo"
    work.mkdir(parents=True, exist_ok=True)
    only = os.environ.get("ZOO_FAMILIES")  # e.g. "MobileNet,ResNet50": a partial run
    some = os.environ.get("ZOO_PASSES")  # e.g. "prune OBD,distill": some columns only
    names = list(QUICK) if ctx.quick else [n for n in ORDER
                                           if n in APPLICATIONS or n in KERASHUB or n in HAND]
    if only:
        names = [n for n in names if n in only.split(",")]
    columns = QUICK_PASSES if ctx.quick else PASSES
    passes = [p for p in columns if not some or p in some.split(",")]
    # quick runs keep their rows in the work folder; the others in docs/ (after every case:
    # a cut-off run leaves its rows)
    store = work / "models.json" if ctx.quick else STORE
    page = store.with_suffix(".md")
    full = not ctx.quick and not only and not some  # a full run: no row of a dropped case
    versions = _versions()
    t0 = time.perf_counter()
    for name in names:
        started = time.perf_counter()
        cells = _family_in_child(name, work, ctx.seed, passes)
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rows = load_rows(store)  # read again: another partial run may have stored rows
        rows = {n: r for n, r in rows.items() if n in names or not full}
        save_row(rows, name, cells, time.perf_counter() - started, at, versions)
        store.write_text(json.dumps({"rows": rows}, indent=1, sort_keys=True) + "\n")
        summary, markdown = _page(rows, columns)
        page.write_text(markdown + "\n")
    rows = load_rows(store)
    summary, _ = _page(rows, columns)
    shown = _table_rows(rows, columns)
    cells = [c for r in shown for c in r[1:]]
    ok = sum(c.startswith("ok") for c in cells)
    unexpected = sum(c.startswith(("unexpected", "crashed")) for c in cells)
    sec.add(f"This run: {len(names)} case{'s' * (len(names) != 1)}, {len(passes)} passes "
            "each, in "
            f"{time.perf_counter() - t0:.0f} s; the table holds every kept row "
            f"({page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name}).")
    sec.add(summary)
    sec.add(table(["case"] + list(columns), shown))
    sec.target(">= 95% of the (case, pass) cells ok", f"{ok / max(len(cells), 1):.0%}",
               ">= 95%", ok / max(len(cells), 1) >= 0.95)
    sec.target("zero 'unexpected' errors (crashes count)", unexpected, 0, unexpected == 0)
    # Float export parity (issue 19: max abs diff <= 1e-4 relative to the output scale on
    # every float export): an export cell is "ok" only when the check passed.
    exports = [r[1 + list(columns).index(c)] for r in shown for c in
               ("export ONNX", "export TFLite") if c in columns]
    if exports:
        missed = [f"{r[0].split(' (')[0]} {c}" for r in shown for c in
                  ("export ONNX", "export TFLite") if c in columns and
                  "disagrees" in r[1 + list(columns).index(c)]]
        passed = sum(c.startswith("ok") for c in exports)
        exact = sum(c.startswith("ok") and "vs float64" in c for c in exports)
        notes = ([f"{exact} beyond 1e-4 of Keras, passed against the float64 copy"]
                 if exact else []) + ([f"missed: {', '.join(missed)}"] if missed else [])
        sec.target("float export parity (max abs diff <= 1e-4 x max(1, output scale), or the "
                   "float64 rule) on every export ONNX / TFLite cell",
                   f"{passed} of {len(exports)}" + (f" ({'; '.join(notes)})" if notes else ""),
                   f"{len(exports)} of {len(exports)}", passed == len(exports))
    return sec


NOT_RUN = "not run yet"


def _table_rows(rows: dict, columns) -> list[list[str]]:
    return sorted([_label(n)] + [r["cells"].get(p, {}).get("cell", NOT_RUN) for p in columns]
                  for n, r in rows.items())


def _when(row: dict) -> str:
    return "; ".join(f"{r['at']}: {'every pass' if r['passes'] == 'all' else ', '.join(r['passes'])}"
                     + (f" ({r['seconds']:.0f} s)" if r.get("seconds") else "")
                     for r in row["runs"])


def _page(rows: dict, columns=PASSES) -> tuple[str, str]:
    """The summary line and the Markdown page of docs/models.md, from every kept row."""
    shown = _table_rows(rows, columns)
    cells = [c for r in shown for c in r[1:]]
    total = max(len(cells), 1)
    ok = sum(c.startswith("ok") for c in cells)
    unexpected = sum(c.startswith(("unexpected", "crashed")) for c in cells)
    missing = sum(c == NOT_RUN for c in cells)
    flagged = sum("**flagged**" in c for c in cells)
    summary = (f"{ok} of {len(cells)} cells ok ({ok / total:.0%}), {unexpected} unexpected "
               f"or crashed, {missing} not run yet, {flagged} int8 artifacts flagged; "
               f"{len(shown)} case{'s' * (len(shown) != 1)}")
    versions = sorted({r["with"] for row in rows.values() for r in row["runs"]})
    measured = [[_label(n), _when(rows[n])] for n in sorted(rows, key=_label)]
    return summary, "\n\n".join([
        "# Model coverage",
        ("Every pass on every zoo case: the smallest member of each `keras.applications` "
         "family (Keras 3.15 ships no RegNet or ResNetRS), built with `weights=None` at a "
         "reduced input, BatchNorm statistics from real photographs; three KerasHub models "
         "(BERT classifier, GPT-2 backbone, ViT classifier) from small configs with random "
         "weights and random token ids or images; and twelve hand-written cases "
         "(bench/zoo_models.py): a subclassed model (given the data's input shape), a "
         "transfer-learning nest (`MobileNetV2(include_top=False)` as a layer), a two-input "
         "and a two-output model, a model with a registered custom layer (loaded through "
         "`--import bench/zoo_user_layers.py`), a mixed_float16 model, a recurrent text "
         "classifier (token ids, masked Embedding, Bidirectional LSTM, GRU), a 1-D "
         "convolutional signal classifier (Conv1D, SeparableConv1D, dilated causal "
         "Conv1D), a video classifier (TimeDistributed Conv2D and Dense, GRU), a "
         "Siamese pair classifier (one encoder and one head shared by two inputs), an "
         "end-to-end text classifier (sentences in, `TextVectorization` inside) and a "
         "tabular model (a string column through `StringLookup`, numeric columns through "
         "an adapted `Normalization`), trained on seeded synthetic data; the TFLite and "
         "ONNX cells of the last two run with `--without-lookups` (the artifact starts at "
         "the lookups' outputs), said in the cell. Written by "
         "`python -m bench --only zoo` (bench/cases/zoo.py); each case is saved and loaded "
         f"back as a user's file. {SAMPLES} calibration/verification samples."),
        ("The passes: inspect; prune 50% by magnitude, by OBD (the default backprop "
         f"Hessian-diagonal estimator, {SAMPLES} calibration samples), 2:4, in blocks of "
         f"{BLOCK} inputs, and structured (50% of the units); share by k-means (16 "
         f"clusters) and by the hashing trick (top-level Dense, Embedding and Conv1D/2D/3D "
         f"layers, {EPOCHS} fine-tuning epoch); "
         "quantize to int8 TFLite and ONNX (full-integer), dynamic-range and float16 "
         "TFLite, Keras's own int8 (`keras-int8`); export to ONNX and TFLite with the "
         "parity check; distill into a structurally pruned copy of the teacher (50% of "
         f"the units; {EPOCHS} epoch); QAT (int8 TFLite after {EPOCHS} epoch of "
         "fake-quantized fine-tuning). A cell is ok with its check (sparsity reached, "
         "parameters kept, export max abs diff, SQNR and top-1 agreement with Keras; "
         "**flagged** when the artifact's check warns) and its time, or the pass's "
         "one-line refusal; `unexpected` is a bug."),
        FLAGGED,
        KERASHUB_NOTE,
        ("Each row is kept in docs/models.json with when and with what it was measured "
         "(below); a partial run (`ZOO_FAMILIES=MobileNet,TwoInput`, `ZOO_PASSES=...` for "
         "some columns) updates its own cells and the page is rendered again from every "
         f"kept row. Measured with {'; '.join(versions) or 'nothing yet'}."),
        summary,
        table(["case"] + list(columns), shown),
        "## When each row was measured (UTC)",
        table(["case", "runs: passes (wall time of the case)"], measured),
    ])


# why int8 of a random-weight family is flagged (measured by bench/cases/zoo_speed.py)
FLAGGED = ("The flagged int8 cells of random-weight families are explained by `python -m "
           "bench --only zoo-speed` (BENCHMARKS.md, 'Model zoo: pruning speed and memory'): "
           "TFLite's per-layer debugger puts almost every op at >= 20 dB (medians 37-42 dB), "
           "yet these networks turn int8-rounded weights alone, or input noise 40 dB down, "
           "into 3-19 dB at the output in float Keras; the trained MobileNetV2 reaches 23 dB "
           "through the same converter.")


KERASHUB_NOTE = (
    "**KerasHub** (keras-hub 0.32, installed with the package): a BERT text classifier "
    "(`BertTextClassifier`, `preprocessor=None`: inputs `token_ids`, `segment_ids`, "
    "`padding_mask`), a GPT-2 backbone, a Llama backbone (grouped-query attention: 4 query "
    "heads share 2 key/value heads; rotary positions, RMS norms, a gated feed-forward) and "
    "a ViT image classifier, built from small configs "
    "(`compress.models.kerashub`: 2 layers, 4 heads, hidden 32, feed-forward 64, sequence "
    "16, ViT 32x32 patch 8) with random weights; nothing is downloaded (presets are never "
    "used). Their `.keras` files name `keras_hub` classes by module, and Keras imports "
    "`keras_hub` itself when loading them, in safe mode: no `--import keras_hub`, no "
    "`--unsafe`. `prune --structured --sparsity 0.5` removes half the attention heads "
    "(4 -> 2 in every block) and half the feed-forward units (64 -> 32) of each transformer "
    "block; the blocks are rebuilt as plain Keras layers (`MultiHeadAttention`, `Dense`, "
    "`LayerNormalization`, masks as `value_mask`/`use_causal_mask`), exact at 0% "
    "(tests/test_kerashub.py). Llama's decoders keep their class and their heads (their "
    "head size is `hidden_dim // num_query_heads`, not an argument) and lose half their "
    "feed-forward units (tests/test_decoder_lms.py). The backbones output hidden states: "
    "without labels they are scored by their error (SQNR), not by a top-1 agreement of "
    "argmaxes over features. Float parity is `max|artifact - Keras| <= 1e-4 x max(1, "
    "output scale)`; where Keras's own float32 output is the one off (ResNet50's softmax: "
    "Keras is 6e-5 to 1.2e-4 from a float64 copy of the model, run to run, with oneDNN's "
    "reduction order), an artifact passes only when it meets the same 1e-4 against the "
    "float64 copy (the cell then says `vs float64`). Where no float32 evaluation can meet "
    "1e-4 (Keras's own float32 output, from an eager call or its compiled `predict`, which "
    "round apart, is beyond it from the float64 copy: EfficientNetV2B0, "
    "whose random weights give logits up to 420 and relative error growing 1e-7 -> 3e-4 "
    "through its stage-6 squeeze-and-excitation blocks, in Keras, onnxruntime and LiteRT "
    "alike), the artifact passes within 2x Keras's own distance to the float64 copy, with "
    "100% top-1 against it (the cell says `within 2x Keras`; `Keras 1e-04 (predict)` names "
    "the evaluation that was furthest).")


# 2-3 hours on 2 cores (big models, SavedModel writes, five conversions and three trainings
# of each): a part of its own, `make bench-zoo`, outside `make bench` (quick runs still include it).
case_zoo.separate = True
CASES = {"zoo": case_zoo}
