"""Structured OBS (#20 item 3): whole units/channels removed one-shot, chosen by greedy
group-OBS on the consumers' layer Hessians and the consumers refit by least squares,
against structured magnitude pruning (unit norm), on LeNet-300-100 (mnist5k) and the
trained MobileNetV2 0.35 (animals, 32x32x3) (``structured-obs``)."""

from __future__ import annotations

import time

from bench.harness import Section, table

VARIANTS = {  # row name -> prune options (all structured, one-shot, no retraining)
    "magnitude (L2 norm)": {"method": "magnitude", "norm": "l2"},
    "magnitude (L1 x BN scale)": {"method": "magnitude", "norm": "bn"},  # L1 without BN
    "OBS (obs-chosen, compensated)": {"method": "obs"},
}


def _acc(model, ds):
    from compress.training import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def case_structured_obs(ctx) -> Section:
    from bench.baselines import trained
    from compress.pruning import prune
    from compress.pruning.structured_obs import prune_channels_obs

    sec = Section("Structured OBS: whole units removed with least-squares compensation",
                  issue="#20")
    models = {"LeNet-300-100 (mnist5k)": trained("lenet300", "mnist5k", ctx)}
    if not ctx.quick:  # quick: LeNet only (the MobileNetV2 cache costs minutes to build)
        from bench.mobilenetv2 import trained_mobilenetv2

        models["MobileNetV2 0.35 (animals, 32x32x3)"] = trained_mobilenetv2(quick=False)
    cal = ctx.size(128, 256)
    levels = (0.3, 0.5)
    for label, (dense, ds) in models.items():
        base = _acc(dense, ds)
        rows, acc = [], {}
        x = ds.x_train[:cal]
        for s in levels:
            for name, opts in VARIANTS.items():
                t0 = time.perf_counter()
                # one-shot: no BatchNorm re-estimation (on by default), the criteria alone
                small, info = prune(dense, ds, structured=True, sparsity=s, calibration=cal,
                                    bn_recalibrate=False, **opts)
                acc[(s, name)] = _acc(small, ds)
                rows.append([f"{s:.0%}", name, f"{acc[(s, name)]:.2%}",
                             f"{info['params_after']:,} / {info['params_before']:,}",
                             f"{time.perf_counter() - t0:.1f}"])
            # Ablation: the norm's channels, compensated (what the choice adds).
            t0 = time.perf_counter()
            small, info = prune_channels_obs(dense, s, x, choose="norm")
            acc[(s, "norm-chosen, compensated")] = _acc(small, ds)
            rows.append([f"{s:.0%}", "L2-norm-chosen, compensated",
                         f"{acc[(s, 'norm-chosen, compensated')]:.2%}",
                         f"{info['params_after']:,} / {info['params_before']:,}",
                         f"{time.perf_counter() - t0:.1f}"])
        several = len(info.get("several_consumers", {}))
        skipped = info.get("not_compensated", {})
        sec.add(f"### {label}\n\nDense test accuracy **{base:.2%}**; one-shot, no "
                f"retraining; {cal} unlabelled training samples for the consumers' "
                f"inputs. Groups refit at several consumers (residual streams): {several}; "
                "groups not compensated: "
                + ("; ".join(f"{r}: {', '.join(g)}" for r, g in skipped.items()) or "none")
                + ".\n\n" + table(["units removed", "criterion", "test accuracy",
                                   "parameters kept", "seconds"], rows))
        for s in levels:
            best = max(acc[(s, n)] for n in VARIANTS if n.startswith("magnitude"))
            got = acc[(s, "OBS (obs-chosen, compensated)")]
            sec.target(f"{label} structured {s:.0%} one-shot: OBS accuracy >= best "
                       "structured magnitude", f"{got:.2%} vs {best:.2%}", ">=",
                       got >= best)
    return sec


CASES = {"structured-obs": case_structured_obs}
