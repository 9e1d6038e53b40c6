"""The dense baselines the other cases start from (#9), trained here first.

A full run starts this case in the untimed phase, beside another case, so the cases with
a speed target (which run alone afterwards) find every baseline already trained instead of
spending their turn on it. The table is the reference the other sections compare with.
"""

from __future__ import annotations

import time

from bench.harness import Section, table

# Every (model, data) baseline a case asks ``bench.baselines.trained`` for.
USED = (("lenet300", "mnist5k"), ("small-cnn", "animals"))


def case_baselines(ctx) -> Section:
    from bench.baselines import RECIPES, trained
    from compress.training import accuracy

    sec = Section("Dense baselines", issue="#9")
    rows = []
    for name, data in USED:
        t0 = time.perf_counter()
        model, ds = trained(name, data, ctx)
        seconds = time.perf_counter() - t0
        full, quick, lr = RECIPES[(name, data)]
        rows.append([name, data, f"{model.count_params():,}", f"{len(ds.x_train):,}",
                     f"up to {ctx.size(quick, full)} (Adam {lr:g}, early stopping)",
                     f"{accuracy(model, ds.x_test, ds.y_test):.2%}", f"{seconds:.0f} s"])
    sec.add("The dense models the compression cases start from, trained once per run with "
            "a fixed seed (best validation loss restored) and shared by every case.")
    sec.add(table(["model", "data", "parameters", "training samples", "epochs",
                   "test accuracy", "training time"], rows))
    return sec


CASES = {"baselines": case_baselines}
