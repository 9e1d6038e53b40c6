"""Second-order compression on a real architecture (#20): one-shot pruning curves
(magnitude, OBD from layer Hessians, OBS with compensation) on keras.applications
MobileNetV2 (alpha 0.35, 32x32x3, animals) and LeNet-300-100 (mnist5k), 2:4, the layer
Hessian's cost against a gradient pass, OBS vs magnitude after one retraining round, and
GPTQ vs round-to-nearest weight rounding (int4 weight-only and the int8 TFLite artifact)
(``pruning-obs-mobilenetv2``)."""

from __future__ import annotations

import time

import numpy as np

from bench.cases.obs import _timed
from bench.harness import Section, table

METHODS = {  # curve name -> prune options (per-layer sparsity: the same allocation)
    "magnitude": {"method": "magnitude"},
    "OBD (layer Hessian)": {"method": "obd", "estimator": "layer"},
    "OBS": {"method": "obs"},
}


def _acc(model, ds):
    from compress.training import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def _models(ctx):
    from bench.baselines import trained
    from bench.mobilenetv2 import trained_mobilenetv2

    lenet, lenet_ds = trained("lenet300", "mnist5k", ctx)
    mnv2, mnv2_ds = trained_mobilenetv2(quick=ctx.quick)
    if ctx.quick:
        mnv2_ds = mnv2_ds.take(200, 100)
    return {"LeNet-300-100 (mnist5k)": (lenet, lenet_ds),
            "MobileNetV2 0.35 (animals, 32x32x3)": (mnv2, mnv2_ds)}


def case_obs_mobilenetv2(ctx) -> Section:
    from compress.pruning import prune

    sec = Section("Second-order compression: OBS pruning and GPTQ rounding on MobileNetV2 "
                  "and LeNet-300-100", issue="#20")
    models = _models(ctx)
    cal = ctx.size(64, 256)
    levels = ctx.size((0.5,), (0.3, 0.5, 0.7, 0.8))
    curves, dense_acc, seconds = {}, {}, {}
    for label, (dense, ds) in models.items():
        dense_acc[label] = _acc(dense, ds)
        curves[label] = {}
        # quick: MobileNetV2's first prunable layers only (it exercises the code paths)
        few = (_first_kernels(dense, 6) if ctx.quick and label.startswith("MobileNetV2")
               else None)
        for name, opts in METHODS.items():
            t0 = time.perf_counter()
            # one-shot, no retraining: BatchNorm re-estimation (on by default) stays off,
            # so the curves compare the criteria alone
            curves[label][name] = [_acc(prune(dense, ds, sparsity=s, calibration=cal,
                                              layers=few, bn_recalibrate=False, **opts)[0],
                                        ds) for s in levels]
            seconds[(label, name)] = (time.perf_counter() - t0) / len(levels)
        rows = [[f"{s:.0%}"] + [f"{curves[label][n][i]:.2%}" for n in METHODS]
                for i, s in enumerate(levels)]
        sec.add(f"### {label}: one-shot unstructured, per layer\n\nDense test accuracy "
                f"**{dense_acc[label]:.2%}**; no retraining; {cal} unlabelled training samples "
                "for the layer Hessians (OBD: their diagonal; OBS: sequential, with "
                "compensation). Seconds per pruning: " + ", ".join(
                    f"{n} {seconds[(label, n)]:.1f} s" for n in METHODS) + ".\n\n"
                + table(["sparsity", *METHODS], rows))
        for s in (0.5, 0.7):
            if s not in levels:
                continue
            i = levels.index(s)
            d_mag = dense_acc[label] - curves[label]["magnitude"][i]
            d_obs = dense_acc[label] - curves[label]["OBS"][i]
            if label.startswith("MobileNetV2"):
                sec.target(f"MobileNetV2 one-shot {s:.0%}: OBS drop <= 1/3 of magnitude's",
                           f"{d_obs * 100:.2f} vs {d_mag * 100:.2f} pts",
                           "<= 1/3", d_obs <= max(d_mag, 0) / 3)
    plot = _plot(ctx, levels, curves, dense_acc)
    sec.add(ctx.image(plot, "accuracy vs sparsity, magnitude / OBD / OBS"))

    label = "MobileNetV2 0.35 (animals, 32x32x3)"
    dense, ds = models[label]
    # 2:4 groups 4 inputs of a unit: the Conv2D/Dense layers whose inputs divide by 4 (all
    # but the 3-channel stem; depthwise kernels have 9 inputs per unit).
    eligible = [la.name for la in dense.layers if type(la).__name__ in ("Conv2D", "Dense")
                and la.kernel.shape[-2] % 4 == 0][:ctx.size(4, None)]
    two_four = {m: _acc(prune(dense, ds, method=m, two_four=True, calibration=cal,
                              layers=eligible, bn_recalibrate=False)[0], ds)
                for m in ("magnitude", "obs")}
    d_mag, d_obs = (dense_acc[label] - two_four[m] for m in ("magnitude", "obs"))
    sec.add(f"2:4 one-shot on MobileNetV2 ({len(eligible)} Conv2D/Dense layers whose inputs "
            f"per unit divide by 4): magnitude **{two_four['magnitude']:.2%}**, OBS "
            f"**{two_four['obs']:.2%}**.")
    sec.target("MobileNetV2 2:4 one-shot: OBS drop <= half of magnitude's",
               f"{d_obs * 100:.2f} vs {d_mag * 100:.2f} pts", "<= 1/2",
               d_obs <= max(d_mag, 0) / 2)

    _hessian_cost(sec, ctx, dense, ds)
    lenet, lenet_ds = models["LeNet-300-100 (mnist5k)"]
    # As the pruning-obs case: the whole training split (3 small layers: seconds).
    if not ctx.quick:  # four LeNet fine-tunes: measured in full runs only
        _retrained(sec, ctx, lenet, lenet_ds, len(lenet_ds.x_train))
    # GPTQ refits each layer by least squares: MobileNetV2's last layers see 1x1 feature
    # maps (one input row per sample), so they need more samples than pruning's curves.
    _rounding(sec, ctx, dict(list(models.items())[:ctx.size(1, None)]), dense_acc,
              ctx.size(64, 512))
    return sec


def _first_kernels(model, n: int) -> list:
    from compress.pruning.masks import prunable_weights

    return [la.name for la, _ in prunable_weights(model)][:n]


def _hessian_cost(sec, ctx, dense, ds) -> None:
    from bench.cases.pruning import _gradient_pass_seconds
    from compress.pruning.hessian import layer_hessians
    from compress.pruning.masks import prunable_weights

    n = ctx.size(128, 512)
    x, y = ds.x_train[:n], ds.y_train[:n]
    kernels = [v for _, v in prunable_weights(dense)]
    layer_hessians(dense, kernels, x[:128])  # warm-up (traces the capture)
    reps = ctx.size(1, 3)
    t_h = min(_timed(lambda: layer_hessians(dense, kernels, x)) for _ in range(reps))
    t_g = min(_gradient_pass_seconds(dense, x, y, batch=128) for _ in range(reps))
    sec.add(f"Layer Hessians of all {len(kernels)} MobileNetV2 kernels (one forward pass, "
            f"{n} samples, batches of 128): {t_h:.2f} s; one gradient pass over the same "
            f"samples: {t_g:.2f} s (best of {reps}).")
    sec.target(f"MobileNetV2 layer-Hessian pass <= 3x one gradient pass ({n} samples)",
               f"{t_h / t_g:.2f}x", "<= 3x", t_h <= 3 * t_g)


def _retrained(sec, ctx, dense, ds, cal) -> None:
    """One-shot and retrained accuracies of magnitude and OBS, global scope. The retrained
    ones are means over seeds (the fine-tuning's shuffling and dropout): on a 1,000-image
    test split one image is 0.1 pt, below what a single seed can tell apart."""
    from compress.pruning import prune

    epochs = ctx.size(1, 3)
    seeds = [ctx.seed + k for k in range(ctx.size(1, 3))]
    rows = []
    for s in ctx.size((0.9,), (0.8, 0.9)):
        got, per_seed = {}, {}
        for m in ("magnitude", "obs"):
            oneshot = _acc(prune(dense, ds, method=m, scope="global", sparsity=s,
                                 calibration=cal)[0], ds)
            per_seed[m] = [_acc(prune(dense, ds, method=m, scope="global", sparsity=s,
                                      calibration=cal, epochs=epochs, seed=seed)[0], ds)
                           for seed in seeds]
            got[m] = (oneshot, float(np.mean(per_seed[m])))
        rows.append([f"{s:.0%}", *(f"{got[m][0]:.2%} / {got[m][1]:.2%} ("
                                   + ", ".join(f"{a:.1%}" for a in per_seed[m]) + ")"
                                   for m in ("magnitude", "obs"))])
        retrained = f"after one retraining round ({epochs} epochs, mean of {len(seeds)} seeds)"
        for j, when in enumerate(("one-shot", retrained)):
            sec.target(f"LeNet-300-100 global {s:.0%} {when}: OBS >= magnitude",
                       f"{got['obs'][j]:.2%} vs {got['magnitude'][j]:.2%}", "obs >= magnitude",
                       got["obs"][j] >= got["magnitude"][j])
    sec.add(f"### LeNet-300-100, global threshold: one-shot / after {epochs} epochs of "
            f"masked fine-tuning (the same for both; mean of seeds {seeds}, each in "
            f"brackets); {cal} calibration samples. OBS prunes each layer to the sparsity "
            "magnitude's global threshold gives it.\n\n"
            + table(["sparsity", "magnitude", "OBS"], rows))


def _rounding(sec, ctx, models, dense_acc, cal) -> None:
    from compress.agreement import comparison
    from compress.quantization import quantize
    from compress.quantization.gptq import round_model
    from compress.training import predict

    rows, fidelity = [], []
    for label, (dense, ds) in models.items():
        x = ds.x_train[:cal]
        t0 = time.perf_counter()
        rounded = {"RTN": round_model(dense, qmax=7, rounding="nearest")[0],
                   "GPTQ": round_model(dense, x, qmax=7)[0]}
        t4 = time.perf_counter() - t0
        rtn4, gptq4 = _acc(rounded["RTN"], ds), _acc(rounded["GPTQ"], ds)
        # how close each rounding keeps the outputs to the float model's, on the test set
        want = predict(dense, ds.x_test)
        close = {k: comparison(predict(m, ds.x_test), want, True) for k, m in rounded.items()}
        fidelity.append([label] + [f"{close[k]['sqnr_db']:.1f} dB / "
                                   f"{close[k]['top1_agreement']:.2%}" for k in rounded])
        int8 = {"nearest": float("nan"), "gptq": float("nan")}
        for rounding in ("nearest", "gptq")[:ctx.size(0, 2)]:  # quick: tests/test_gptq.py
            _, info = quantize(dense, ds, mode="int8", rounding=rounding, latency=False,
                               calibration_samples=cal, seed=ctx.seed)
            int8[rounding] = info["accuracy"]
        d_rtn, d_gptq = dense_acc[label] - rtn4, dense_acc[label] - gptq4
        rows.append([label, f"{dense_acc[label]:.2%}", f"{rtn4:.2%}", f"{gptq4:.2%}",
                     f"{int8['nearest']:.2%}", f"{int8['gptq']:.2%}", f"{t4:.1f}"])
        sec.target(f"{label.split(' (')[0]} int4 weight-only per-channel: GPTQ drop <= half "
                   "of round-to-nearest's", f"{d_gptq * 100:.2f} vs {d_rtn * 100:.2f} pts",
                   "<= 1/2", d_gptq <= max(d_rtn, 0) / 2)
    sec.add("### Weight rounding: GPTQ vs round-to-nearest on the converter's grid\n\n"
            "int4: symmetric per-channel 4-bit (`[-7, 7] * max|w_c| / 7`), weights snapped in "
            "Keras (a float-stored artifact: no runtime here stores 4-bit convolution "
            "weights). int8: the full-integer TFLite artifact run in LiteRT (weights "
            "GPTQ-rounded onto exactly the converter's per-channel grid, activations "
            f"calibrated as usual). {cal} calibration samples; GPTQ with act-order and each "
            "layer refit to the float model's outputs before rounding.\n\n"
            + table(["model", "float", "int4 RTN", "int4 GPTQ", "int8 TFLite RTN",
                     "int8 TFLite GPTQ", "int4 both (s)"], rows)
            + "\n\nThe int4 models' outputs against the float model's on the test set (output "
            "SQNR / top-1 agreement): where both roundings keep the accuracy, this is where "
            "they differ.\n\n"
            + table(["model", "int4 RTN vs float", "int4 GPTQ vs float"], fidelity))


def _plot(ctx, levels, curves, dense_acc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6))
    for ax, (label, by_method) in zip(axes, curves.items()):
        for name, accs in by_method.items():
            ax.plot([s * 100 for s in levels], [a * 100 for a in accs], marker="o", label=name)
        ax.axhline(dense_acc[label] * 100, color="gray", ls="--", lw=1, label="dense")
        ax.set(title=label, xlabel="sparsity (%), one-shot, per layer",
               ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.plot_dir / "obs_accuracy_vs_sparsity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CASES = {"pruning-obs-mobilenetv2": case_obs_mobilenetv2}
