"""Distillation (issue #7): Hinton et al.'s MNIST setting on mnist5k, through keras.distillation.

- teacher 2x1200 ReLU with dropout (0.2 on the input, 0.5 hidden) trained on jittered
  images (random shifts of up to 2 pixels), as Hinton et al. trained theirs; student
  2x800 without regularisation, and a student derived from the teacher at width x0.1;
- every student starts from the same initial weights and trains for the same epochs with
  the same optimizer: alone (cross-entropy on labels, no regularisation, the issue's
  baseline), alone on the same shifted batches (hard labels: what augmentation alone
  gives), and distilled with consistent teaching (``distill(augment="shift")``: the
  teacher scores the same shifted view as the student, Beyer et al. 2022);
- T in {1, 2, 4, 8, 20} at alpha 1 (soft targets only, Beyer et al.'s function matching),
  swept on the 2x800 student with full-length runs (short runs did not predict the full
  ones) and picked on the validation split (never on test); the picked setting also
  trains the x0.1 student;
- 95% one-shot magnitude pruning of the teacher, fine-tuned for the same epochs with
  cross-entropy or with distillation from the dense teacher at one fixed setting (zeros
  held by ``compress.pruning.keep_zeros``' variable constraints, dropout scaled for the
  retraining as Han et al. 2015 advise);
- our driver against a plain ``keras.distillation.Distiller`` written by hand on the same
  setting (same seed, same initial weights), and against the Distiller used as its
  docstring shows (softmax models, default ``LogitsDistillation`` loss).
"""

from __future__ import annotations

import math

from bench.harness import Section, table

TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
# alpha 1: function matching, soft targets only (Beyer et al. 2022); 0.9: Hinton et al.
ALPHAS = (1.0,)  # add 0.9 (Hinton et al.'s) to also sweep alpha at the best T
SHIFT = 2       # pixels of jitter, teacher and consistent teaching alike
PRUNE_LR = 2e-3
PRUNE_KD = (1.0, 0.5)   # T, alpha of the pruned fine-tuning


def _mlp(hidden: int, dropout: bool, name: str):
    import keras

    layers = [keras.Input((28, 28, 1)), keras.layers.Flatten(name="flatten")]
    if dropout:
        layers.append(keras.layers.Dropout(0.2, name="drop_in"))
    for i in (1, 2):
        layers.append(keras.layers.Dense(hidden, activation="relu", name=f"fc{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(0.5, name=f"drop{i}"))
    layers.append(keras.layers.Dense(10, activation="softmax", name="predictions"))
    return keras.Sequential(layers, name=name)


def _teacher(ds, ctx, epochs):
    import keras

    from compress import training
    from compress.distillation.augment import augmented_batches

    # "baseline-*": cached within a run only (python -m bench removes them when it starts)
    path = (ctx.work_dir / f"baseline-distill-teacher-2x1200-jitter-s{ctx.seed}-e{epochs}"
                           f"-q{int(ctx.quick)}.keras")
    if path.exists():
        return keras.models.load_model(path)
    training.set_seed(ctx.seed)
    teacher = _mlp(1200, dropout=True, name="teacher_2x1200")
    training.compile_classifier(teacher, learning_rate=1e-3)
    teacher.fit(augmented_batches(ds.x_train, ds.y_train, "shift", SHIFT, 128), epochs=epochs,
                shuffle=False, verbose=0)
    teacher.save(path)
    return teacher


def _alone(init, ds, epochs, lr, batch, seed, augment="none"):
    from compress import training
    from compress.distillation import train_alone

    training.set_seed(seed)
    return train_alone(init, ds, epochs, lr, batch, augment=augment, shift=SHIFT)


def _pct(frac: float) -> str:
    return "- (no gap)" if math.isnan(frac) else f"{frac:.0%}"


def _val_acc(model, ds):
    from compress import training

    return training.accuracy(model, ds.x_val, ds.y_val)


def _student_runs(teacher, init, ds, epochs, sweep_epochs, temps, lr, batch, seed,
                  setting=None) -> dict:
    """Alone, alone on shifted batches, the (T, alpha) sweep (short runs; none when a
    ``setting`` is given) and the picked setting (full epochs)."""
    from compress import training
    from compress.distillation import distill

    def scores(m):
        return training.accuracy(m, ds.x_test, ds.y_test), _val_acc(m, ds)

    def kd(T, alpha, n_epochs):
        training.set_seed(seed)
        student, _ = distill(teacher, init, ds, temperature=T, alpha=alpha, epochs=n_epochs,
                             learning_rate=lr, batch_size=batch, augment="shift", shift=SHIFT)
        return scores(student)

    def best(keys):
        # Ties: nearest T=4 (the middle of the range), then the larger alpha.
        return max(keys, key=lambda k: (sweep[k][1], -abs(math.log(k[0] / 4.0)), k[1]))

    row = {"params": init.count_params(),
           "alone": scores(_alone(init, ds, epochs, lr, batch, seed)),
           "alone_shift": scores(_alone(init, ds, epochs, lr, batch, seed, augment="shift"))}
    sweep = {}
    if setting is None:
        sweep = {(T, ALPHAS[0]): kd(T, ALPHAS[0], sweep_epochs) for T in temps}
        T = best(list(sweep))[0]
        sweep.update({(T, a): kd(T, a, sweep_epochs) for a in ALPHAS[1:]})
        setting = best(list(sweep))
    row["sweep"], row["setting"] = sweep, setting
    row["distilled"] = (sweep[setting] if setting in sweep and sweep_epochs == epochs
                        else kd(*setting, epochs))
    return row


def case_distillation(ctx) -> Section:
    """Teacher 2x1200 vs student 2x800 / width x0.1, alone vs distilled; pruning; parity."""
    import time

    from compress import training
    from compress.data import load_data, prepare
    from compress.distillation import width_student

    sec = Section("Distillation: teacher to student on keras.distillation (Hinton et al.)",
                  issue="#7")
    t_start = time.perf_counter()
    seed = ctx.seed
    ds = prepare(_mlp(8, False, "probe"), load_data("mnist5k", seed))
    if ctx.quick:
        ds = ds.take(400, 200)
    # Each student trains for the same epochs alone and distilled: 15 for the 2x800 (time),
    # 20 for x0.1 (at 10 its distilled run is still under-trained; a small model is cheap).
    epochs = ctx.size(1, 15)
    small_epochs = ctx.size(1, 20)
    sweep_epochs = epochs            # full-length sweep runs (setting picked on val)
    teacher_epochs = ctx.size(2, 40)
    tune_epochs = ctx.size(1, 4)     # pruning fine-tuning
    temps = ctx.size((4.0,), TEMPERATURES)
    setting = ctx.size((4.0, ALPHAS[0]), None)   # quick mode: no sweep
    lr, batch = 1e-3, 128

    teacher = _teacher(ds, ctx, teacher_epochs)
    t_acc = training.accuracy(teacher, ds.x_test, ds.y_test)
    t_val = _val_acc(teacher, ds)

    # --- 2x800 and width x0.1 students --------------------------------------------------
    # The x0.1 student is the teacher's architecture without its dropout (unregularised like
    # the 2x800 student), narrowed by width_student. T is swept on the 2x800 student only
    # (time) and its pick used for x0.1. Quick mode (a harness check) runs the 2x800 only.
    students = (("2x800", epochs, lambda: _mlp(800, False, "student_2x800")),
                ("x0.1", small_epochs, lambda: width_student(_mlp(1200, False, "plain"), 0.1,
                                                             name="student_x0.1")))
    results = {}
    for label, n_epochs, build in students[:ctx.size(1, 2)]:
        training.set_seed(seed + 1)
        results[label] = _student_runs(teacher, build(), ds, n_epochs, sweep_epochs, temps,
                                       lr, batch, seed, setting)
        results[label]["epochs"] = n_epochs
        setting = results[label]["setting"]

    def closed(acc, alone_acc):
        gap = t_acc - alone_acc
        return (acc - alone_acc) / gap if gap > 0 else float("nan")

    rows = [[f"teacher 2x1200 (dropout, jitter +-{SHIFT} px, {teacher_epochs} epochs)",
             f"{teacher.count_params():,}", "-", "-", f"{teacher_epochs}", f"{t_acc:.2%}",
             f"{t_val:.2%}", "-"]]
    for label, row in results.items():
        base = row["alone"][0]
        p = f"{row['params']:,}"
        epochs = row["epochs"]
        rows.append([f"student {label} alone (no regularisation)", p, "-", "-", f"{epochs}",
                     f"{base:.2%}", f"{row['alone'][1]:.2%}", "-"])
        rows.append([f"student {label} alone, same shifted batches (hard labels)", p, "-",
                     "-", f"{epochs}", f"{row['alone_shift'][0]:.2%}",
                     f"{row['alone_shift'][1]:.2%}", _pct(closed(row["alone_shift"][0], base))])
        if row["sweep"]:
            for (T, a), (acc, val) in row["sweep"].items():
                mark = " (picked on val)" if (T, a) == row["setting"] else ""
                rows.append([f"student {label} distilled, consistent shifts, sweep{mark}", p,
                             f"{T:g}", f"{a:g}", f"{sweep_epochs}", f"{acc:.2%}", f"{val:.2%}",
                             _pct(closed(acc, base))])
        acc, val = row["distilled"]
        T, a = row["setting"]
        rows.append([f"**student {label} distilled, consistent shifts**", p, f"{T:g}",
                     f"{a:g}", f"{epochs}", f"{acc:.2%}", f"{val:.2%}",
                     _pct(closed(acc, base))])
    big = results["2x800"]
    n_test = len(ds.x_test)
    sec.add(f"mnist5k ({len(ds.x_train):,} train / {len(ds.x_val)} val / {n_test:,} test), "
            f"Adam {lr:g}, batch {batch}; each student trains for the same epochs alone and "
            f"distilled ({results['2x800']['epochs']} for the 2x800, {small_epochs} for x0.1). "
            "The teacher is "
            f"trained on jittered digits (random shifts of up to {SHIFT} pixels, as Hinton et "
            "al.'s), which lifts it above the unregularised 2x800 student; in the previous version "
            "of this benchmark, distilling it on the unshifted training digits alone did not "
            "pass that advantage on to the 2x800 student. So the students are distilled with "
            f"**consistent teaching** (`distill(..., augment=\"shift\", shift={SHIFT})`, Beyer "
            "et al. 2022): every epoch shows new shifted views, and the teacher scores the "
            "same view the student sees. The baseline of each target is the student alone "
            "without regularisation or augmentation, as the issue sets it; the row "
            "\"alone, same shifted batches\" trains the student on exactly the batches of the "
            "distilled run with hard labels only, so the part of the gap that augmentation "
            "closes by itself is shown, and the rest is distillation's. T is swept at alpha "
            f"{ALPHAS[0]:g} (soft targets only: Beyer et al.'s function matching) with "
            f"full-length ({sweep_epochs}-epoch) runs of the 2x800 student (2-epoch runs, "
            "tried before, did not predict the full-length ones)"
            + (f", then alpha {', '.join(f'{a:g}' for a in ALPHAS[1:])} is tried at the best T"
               if len(ALPHAS) > 1 else "")
            + f"; the setting is picked on the {len(ds.x_val)} val digits, never on test, and "
            "also trains the x0.1 student. Errors on the "
            f"{n_test:,} test digits: teacher {round((1 - t_acc) * n_test)}, 2x800 alone "
            f"{round((1 - big['alone'][0]) * n_test)}, alone on shifted batches "
            f"{round((1 - big['alone_shift'][0]) * n_test)}, distilled "
            f"{round((1 - big['distilled'][0]) * n_test)}. The x0.1 student is "
            "`width_student` x0.1 of the teacher's architecture without dropout (2x120).")
    sec.add(table(["model", "params", "T", "alpha", "epochs", "test acc", "val acc",
                   "gap closed (vs alone, no regularisation)"], rows))
    for label, row in results.items():
        base, aug, acc = row["alone"][0], row["alone_shift"][0], row["distilled"][0]
        frac, aug_frac = closed(acc, base), closed(aug, base)
        if not math.isnan(frac):
            verdict = ("distillation adds to augmentation" if acc > aug else
                       "distillation adds nothing over augmentation alone here")
            sec.add(f"{label}: of the {t_acc - base:.1%} gap between the student alone and "
                    f"the teacher, training on the shifted batches with hard labels closes "
                    f"{aug_frac:.0%}, consistent-teaching distillation {frac:.0%} "
                    f"({verdict}: {acc - aug:+.1%} over the same batches with hard labels).")
    gap = t_acc - results["2x800"]["alone"][0]
    if gap > 0:
        se = math.sqrt(t_acc * (1 - t_acc) / n_test)
        sec.add(f"Noise: one test accuracy near {t_acc:.0%} on {n_test:,} digits has a "
                f"standard error of about {se:.1%}, against a 2x800 gap of {gap:.1%}: each "
                f"2x800 \"gap closed\" figure carries roughly +-{se / gap:.0%}, so its verdict "
                "is within the noise of a single run.")

    for label, row in results.items():
        base, acc = row["alone"][0], row["distilled"][0]
        frac = closed(acc, base)
        # No gap (the student alone matches or beats the teacher): nothing to close, not met.
        shown = "no gap: alone >= teacher" if math.isnan(frac) else f"{frac:.0%}"
        sec.target(f"{label} distilled (consistent shifts, T={row['setting'][0]:g}, alpha "
                   f"{row['setting'][1]:g} picked on val) closes >= 50% of the gap between "
                   "the student alone "
                   f"(no regularisation) and the teacher ({row['epochs']} epochs both)",
                   f"{shown} ({base:.2%} -> {acc:.2%}, teacher {t_acc:.2%}; alone on the "
                   f"shifted batches {row['alone_shift'][0]:.2%})", ">= 50%",
                   not math.isnan(frac) and frac >= 0.5)
    sec.add(_plot(ctx, results, t_acc, sweep_epochs))

    # --- distillation as the fine-tuning loss after 95% magnitude pruning ---------------
    text, pr = _pruning(teacher, ds, tune_epochs, batch, seed, ctx.size(1, 2))
    sec.add(text)
    sec.target(f"after 95% magnitude pruning, {tune_epochs} epochs of distillation "
               f"({pr['kd_setting']}) beat {tune_epochs} epochs of "
               "cross-entropy fine-tuning (sparsity kept; means over seeds)",
               f"{pr['kd']:.2%} vs {pr['ce']:.2%} (sparsity {pr['sparsity']:.1%})",
               "distilled > cross-entropy", pr["kd"] > pr["ce"] and pr["sparsity"] >= 0.949)

    # --- our driver vs keras.distillation.Distiller by hand ------------------------------
    text, par = _parity(teacher, ds, 1, lr, batch, 0.9, seed)
    sec.add(text)
    sec.target("our driver = plain keras.distillation.Distiller (logits, KLDivergence()) on "
               "the same seed and initial weights: test accuracy within 0.2 pts",
               f"{par['ours']:.2%} vs {par['by_hand']:.2%} (max weight diff {par['diff']:.1e})",
               "<= 0.2 pts", abs(par["ours"] - par["by_hand"]) <= 0.002)
    sec.add(f"_Measured in {time.perf_counter() - t_start:.0f} s._")
    return sec


def _pruning(teacher, ds, epochs, batch, seed, n_seeds) -> tuple[str, dict]:
    import keras
    import numpy as np

    from compress import training
    from compress.distillation import distill
    from compress.pruning import keep_zeros, prune, release_zeros

    sparsity_goal = 0.95
    pruned, _ = prune(teacher, ds, method="magnitude", sparsity=sparsity_goal,
                      schedule="oneshot")
    p_acc = training.accuracy(pruned, ds.x_test, ds.y_test)

    def sparsity(m):
        ws = [np.asarray(layer.kernel) for layer in m.layers if hasattr(layer, "kernel")]
        return 1 - sum(np.count_nonzero(w) for w in ws) / sum(w.size for w in ws)

    def scores(m):
        return (training.accuracy(m, ds.x_test, ds.y_test), _val_acc(m, ds), sparsity(m))

    def student():
        # Han et al. (2015): retrain a pruned net with its dropout scaled by
        # sqrt(kept / original connections); the teacher's 0.5 would starve 5% of weights.
        m = training.copy_model(pruned)
        for layer in m.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = float(layer.rate * np.sqrt(1 - sparsity_goal))
        m = training.copy_model(m)
        keep_zeros(m)
        return m

    def mean(results):
        return (float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results])),
                min(r[2] for r in results))

    def cross_entropy(run_seed):
        ce = student()
        training.set_seed(run_seed)
        training.compile_classifier(ce, learning_rate=PRUNE_LR)
        training.fit(ce, ds, epochs=epochs, batch_size=batch, verbose=0)
        release_zeros(ce)
        return scores(ce)

    def distilled(run_seed):
        training.set_seed(run_seed)
        kd, _ = distill(teacher, student(), ds, temperature=PRUNE_KD[0], alpha=PRUNE_KD[1],
                        epochs=epochs, learning_rate=PRUNE_LR, batch_size=batch)
        release_zeros(kd)
        return scores(kd)

    # Every setting is run with `n_seeds` shuffling seeds and averaged (4-epoch runs on
    # 1,000 test digits differ by ~1 pt from seed to seed). Both losses on the unshifted
    # digits (shifted fine-tuning scored lower for both in a trial), same learning rate.
    seeds = [seed + i for i in range(n_seeds)]
    ce_key = f"cross-entropy, Adam {PRUNE_LR:g}"
    kd_key = f"distillation T={PRUNE_KD[0]:g}, alpha {PRUNE_KD[1]:g}, Adam {PRUNE_LR:g}"
    runs = {ce_key: mean([cross_entropy(s) for s in seeds]),
            kd_key: mean([distilled(s) for s in seeds])}
    rows = [["dense teacher", "0%", f"{training.accuracy(teacher, ds.x_test, ds.y_test):.2%}",
             "-"],
            [f"{sparsity_goal:.0%} magnitude, no fine-tuning", f"{sparsity(pruned):.1%}",
             f"{p_acc:.2%}", "-"]]
    rows += [[f"+ {epochs} epochs {k}", f"{sp:.1%}", f"{acc:.2%}", f"{val:.2%}"]
             for k, (acc, val, sp) in runs.items()]
    result = {"ce": runs[ce_key][0], "kd": runs[kd_key][0],
              "kd_setting": kd_key.replace("distillation ", ""),
              "sparsity": min(r[2] for r in runs.values())}
    return ("**95% one-shot magnitude pruning of the teacher** (`compress.pruning.prune`), "
            f"then {epochs} epochs of fine-tuning with the zeros held by "
            "`compress.pruning.keep_zeros`, the teacher's dropout scaled by sqrt(0.05) for the "
            "retraining (Han et al. 2015) in every run; the distillation runs' teacher is the "
            f"dense model. Both losses train on the unshifted digits at Adam {PRUNE_LR:g}; "
            f"distillation at one fixed setting (T={PRUNE_KD[0]:g}, alpha {PRUNE_KD[1]:g}: "
            "the previous version of this benchmark picked it on val among four). "
            f"Accuracies are means over {n_seeds} shuffling seeds.\n\n"
            + table(["model", "kernel sparsity", "test acc", "val acc"], rows)), result


def _parity(teacher, ds, epochs, lr, batch, alpha, seed) -> tuple[str, dict]:
    import keras
    import numpy as np

    from compress import training
    from compress.distillation import distill

    T = 4.0
    training.set_seed(seed + 1)
    init = _mlp(800, False, "student_2x800")

    # Our fits shuffle each epoch in an order of their own (a function of the epoch and of
    # a seed drawn when the fit starts, so that a resumed fit sees the same batches);
    # Keras's Distiller is given exactly those batches below, so that the two runs differ
    # in their losses only.
    drawn = []
    shuffled = training.epoch_shuffled

    def spy(*args, **kwargs):
        drawn.append(kwargs["seed"])
        return shuffled(*args, **kwargs)

    training.epoch_shuffled = spy
    try:
        training.set_seed(seed)
        ours, _ = distill(teacher, init, ds, temperature=T, alpha=alpha, epochs=epochs,
                          learning_rate=lr, batch_size=batch)
    finally:
        training.epoch_shuffled = shuffled

    def logits_copy(model):
        m = training.copy_model(model)
        m.layers[-1].activation = keras.activations.linear
        return m

    def plain(t_model, s_model, loss, student_loss):
        distiller = keras.distillation.Distiller(
            teacher=t_model, student=s_model,
            distillation_losses=keras.distillation.LogitsDistillation(temperature=T, **loss),
            student_loss_weight=1 - alpha)
        distiller.compile(optimizer=keras.optimizers.Adam(lr), loss=student_loss,
                          metrics=["accuracy"])
        batches, steps = shuffled(ds.x_train, ds.y_train, batch, epochs, seed=drawn[-1])
        training.set_seed(seed)
        distiller.fit(batches, epochs=epochs, steps_per_epoch=steps,
                      validation_data=(ds.x_val, ds.y_val), verbose=0)
        return s_model

    # By hand, done right: logits models and a KLDivergence instance.
    by_hand = plain(logits_copy(teacher), logits_copy(init),
                    {"loss": keras.losses.KLDivergence()},
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    by_hand.layers[-1].activation = keras.activations.softmax
    # As the Distiller's docstring shows: the saved softmax models and the default loss.
    naive = plain(training.copy_model(teacher), training.copy_model(init), {},
                  "sparse_categorical_crossentropy")

    diff = max(float(np.max(np.abs(a - b)))
               for a, b in zip(ours.get_weights(), by_hand.get_weights()))
    accs = [training.accuracy(m, ds.x_test, ds.y_test) for m in (ours, by_hand, naive)]
    rows = [["`compress.distillation.distill`", f"{accs[0]:.2%}", "-"],
            ["`keras.distillation.Distiller` by hand (logits models, `KLDivergence()`)",
             f"{accs[1]:.2%}", f"{diff:.1e}"],
            ["`Distiller` as documented (softmax models, default loss string)",
             f"{accs[2]:.2%}", "-"]]
    result = {"diff": diff, "ours": accs[0], "by_hand": accs[1], "naive": accs[2]}
    return (f"**Our driver vs a plain `keras.distillation.Distiller`** (student 2x800, T={T:g}, "
            f"alpha {alpha}, {epochs} epochs, same seed, initial weights and batches: the "
            "Distiller is fed our fit's per-epoch order). With "
            "`loss=\"kl_divergence\"` (the default) `LogitsDistillation` gets the plain "
            "function, misses its `isinstance(loss, KLDivergence)` branch and compares the "
            "scaled outputs directly, with no softmax and no T^2 factor.\n\n"
            + table(["driver", "test acc", "max abs weight diff vs ours"], rows)), result


def _plot(ctx, results, t_acc, sweep_epochs) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for (label, row), color in zip(results.items(), ("C0", "C1")):
        a0 = [(T, v[1]) for (T, a), v in sorted(row["sweep"].items()) if a == ALPHAS[0]]
        if a0:
            ax.plot([t for t, _ in a0], [v * 100 for _, v in a0], "o-", color=color,
                    label=f"{label} distilled, alpha {ALPHAS[0]:g}, {sweep_epochs} epochs (val)")
        ax.axhline(row["alone"][0] * 100, color=color, ls=":", label=f"{label} alone (test)")
        ax.axhline(row["distilled"][0] * 100, color=color, ls="--",
                   label=f"{label} distilled, T={row['setting'][0]:g}, "
                         f"alpha {row['setting'][1]:g} (test)")
    ax.axhline(t_acc * 100, color="black", ls="-", lw=0.8, label="teacher 2x1200 (test)")
    temps = sorted({t for row in results.values() for t, _ in row["sweep"]}) or [4.0]
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = ctx.plot_dir / "distillation-temperature.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ctx.image(path, "accuracy vs temperature")


CASES = {"distillation": case_distillation}
