"""Distillation (issue #7): Hinton et al.'s MNIST setting on mnist5k, through keras.distillation.

- teacher 2x1200 ReLU with dropout (0.2 on the input, 0.5 hidden), student 2x800 without
  regularisation, and a student derived from the teacher at width x0.1;
- every student starts from the same initial weights and trains for the same epochs with
  the same optimizer, alone (cross-entropy on labels) or distilled at T in
  {1, 2, 4, 8, 20} (alpha 0.9, and 0.5 too for the x0.1 student); each student's (T, alpha) is picked on the
  validation split, never on test;
- 95% one-shot magnitude pruning of the teacher, fine-tuned for the same epochs with plain
  cross-entropy or with distillation from the dense teacher (zeros held by
  ``compress.pruning.keep_zeros``' variable constraints in both, dropout scaled for the
  retraining as Han et al. 2015 advise, learning rate picked on val for cross-entropy
  and used by both, T and alpha picked on val);
- our driver against a plain ``keras.distillation.Distiller`` written by hand on the same
  setting (same seed, same initial weights), and against the Distiller used as its
  docstring shows (softmax models, default ``LogitsDistillation`` loss).
"""

from __future__ import annotations

import math

from bench.harness import Section, table

TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
ALPHAS = (0.9, 0.5)
PRUNE_LRS = (5e-4, 2e-3)
PRUNE_KD = ((1.0, 0.5), (2.0, 0.5), (2.0, 0.9), (4.0, 0.9))


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

    path = ctx.work_dir / f"distill-teacher-2x1200-s{ctx.seed}-e{epochs}-q{int(ctx.quick)}.keras"
    if path.exists():
        return keras.models.load_model(path)
    training.set_seed(ctx.seed)
    teacher = _mlp(1200, dropout=True, name="teacher_2x1200")
    training.compile_classifier(teacher, learning_rate=1e-3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    training.fit(teacher, ds, epochs=epochs, batch_size=128, callbacks=[stop], verbose=0)
    teacher.save(path)
    return teacher


def _alone(init, ds, epochs, lr, batch, seed):
    from compress import training

    model = training.copy_model(init)
    training.set_seed(seed)
    training.compile_classifier(model, learning_rate=lr)
    training.fit(model, ds, epochs=epochs, batch_size=batch, verbose=0)
    return model


def _best_setting(row) -> tuple[float, float]:
    """The ``(T, alpha)`` with the best validation accuracy (ties: nearest T=4, then the
    larger alpha)."""
    return max(row["distilled"],
               key=lambda k: (row["distilled"][k][1], -abs(k[0] - 4.0), k[1]))


def _pct(frac: float) -> str:
    return "- (no gap)" if math.isnan(frac) else f"{frac:.0%}"


def _val_acc(model, ds):
    from compress import training

    return training.accuracy(model, ds.x_val, ds.y_val)


def case_distillation(ctx) -> Section:
    """Teacher 2x1200 vs student 2x800 / width x0.1, alone vs distilled; pruning; parity."""
    import time

    from compress import training
    from compress.data import load_data, prepare
    from compress.distillation import distill, width_student

    sec = Section("Distillation: teacher to student on keras.distillation (Hinton et al.)",
                  issue="#7")
    t_start = time.perf_counter()
    seed = ctx.seed
    ds = prepare(_mlp(8, False, "probe"), load_data("mnist5k", seed))
    if ctx.quick:
        ds = ds.take(400, 200)
    # Every student, alone or distilled. 20, not 10: at 10 epochs the distilled x0.1 student
    # is still under-trained (lower train accuracy than alone at every T).
    epochs = ctx.size(1, 20)
    tune_epochs = ctx.size(1, 4)   # pruning fine-tuning
    temps = ctx.size((4.0,), TEMPERATURES)
    # Both alphas for the small student (its soft-loss weight matters, Hinton et al.); the
    # 2x800 sweep keeps the paper's alpha 0.9 (time).
    alphas = {"2x800": (0.9,), "x0.1": ctx.size((0.9,), ALPHAS)}
    lr, batch, alpha = 1e-3, 128, 0.9  # alpha: the parity check's

    teacher = _teacher(ds, ctx, ctx.size(2, 20))
    t_acc = training.accuracy(teacher, ds.x_test, ds.y_test)

    # --- 2x800 and width x0.1 students: alone vs distilled ------------------------------
    # The x0.1 student is the teacher's architecture without its dropout (unregularised like
    # the 2x800 student), narrowed by width_student. Each student gets the whole sweep
    # (T x alpha); the setting of its target is picked on its own val accuracy.
    results = {}
    for label, build in (("2x800", lambda: _mlp(800, False, "student_2x800")),
                         ("x0.1", lambda: width_student(_mlp(1200, False, "plain"), 0.1,
                                                        name="student_x0.1"))):
        training.set_seed(seed + 1)
        init = build()
        alone = _alone(init, ds, epochs, lr, batch, seed)
        row = {"params": init.count_params(),
               "alone": training.accuracy(alone, ds.x_test, ds.y_test),
               "alone_val": _val_acc(alone, ds), "distilled": {}}
        for a in alphas[label]:
            for T in temps:
                training.set_seed(seed)
                student, _ = distill(teacher, init, ds, temperature=T, alpha=a,
                                     epochs=epochs, learning_rate=lr, batch_size=batch)
                row["distilled"][(T, a)] = (training.accuracy(student, ds.x_test, ds.y_test),
                                            _val_acc(student, ds))
        results[label] = row

    def closed(acc, alone_acc):
        gap = t_acc - alone_acc
        return (acc - alone_acc) / gap if gap > 0 else float("nan")

    rows = [["teacher 2x1200 (dropout)", f"{teacher.count_params():,}", "-", "-",
             f"{t_acc:.2%}", "-", "-"]]
    for label, row in results.items():
        rows.append([f"student {label} alone", f"{row['params']:,}", "-", "-",
                     f"{row['alone']:.2%}", f"{row['alone_val']:.2%}", "-"])
        chosen = _best_setting(row)
        for (T, a), (acc, val) in row["distilled"].items():
            mark = " (chosen on val)" if (T, a) == chosen else ""
            rows.append([f"student {label} distilled{mark}", f"{row['params']:,}", f"{T:g}",
                         f"{a:g}", f"{acc:.2%}", f"{val:.2%}",
                         _pct(closed(acc, row["alone"]))])
    sec.add(f"mnist5k ({len(ds.x_train):,} train / {len(ds.x_val)} val / {len(ds.x_test):,} "
            f"test), {epochs} epochs for every student, Adam {lr:g}, batch {batch}. Errors on "
            f"the {len(ds.x_test):,} test digits: teacher "
            f"{round((1 - t_acc) * len(ds.x_test))}, 2x800 alone "
            f"{round((1 - results['2x800']['alone']) * len(ds.x_test))}. The x0.1 student is "
            "`width_student` x0.1 of the teacher's architecture without dropout (2x120). "
            "Every student of a row group starts from the same initial weights; T and alpha "
            "are picked per student on the 400 val digits, never on test.")
    sec.add(table(["model", "params", "T", "alpha", "test acc", "val acc", "gap closed"],
                  rows))

    for label, row in results.items():
        T, a = _best_setting(row)
        acc = row["distilled"][(T, a)][0]
        frac = closed(acc, row["alone"])
        # No gap (the student alone matches or beats the teacher): nothing to close, not met.
        shown = "no gap: alone >= teacher" if math.isnan(frac) else f"{frac:.0%}"
        sec.target(f"{label} distilled (T={T:g}, alpha {a:g}, chosen on val) closes >= 50% "
                   "of the gap between the student alone and the teacher (same epochs)",
                   f"{shown} ({row['alone']:.2%} -> {acc:.2%}, teacher {t_acc:.2%})",
                   ">= 50%", frac >= 0.5)
    sec.add(_plot(ctx, results, t_acc))

    # --- distillation as the fine-tuning loss after 95% magnitude pruning ---------------
    text, pr = _pruning(teacher, ds, tune_epochs, batch, seed, ctx.size(1, 3))
    sec.add(text)
    sec.target(f"after 95% magnitude pruning, {tune_epochs} epochs of distillation "
               f"({pr['kd_setting']}, chosen on val) beat {tune_epochs} epochs of "
               "cross-entropy fine-tuning (sparsity kept; means over seeds)",
               f"{pr['kd']:.2%} vs {pr['ce']:.2%} (sparsity {pr['sparsity']:.1%})",
               "distilled > cross-entropy", pr["kd"] > pr["ce"] and pr["sparsity"] >= 0.949)

    # --- our driver vs keras.distillation.Distiller by hand ------------------------------
    text, par = _parity(teacher, ds, ctx.size(1, 10), lr, batch, alpha, seed)
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

    def cross_entropy(lr, run_seed):
        ce = student()
        training.set_seed(run_seed)
        training.compile_classifier(ce, learning_rate=lr)
        training.fit(ce, ds, epochs=epochs, batch_size=batch, verbose=0)
        release_zeros(ce)
        return scores(ce)

    def distilled(T, alpha, lr, run_seed):
        training.set_seed(run_seed)
        kd, _ = distill(teacher, student(), ds, temperature=T, alpha=alpha,
                        epochs=epochs, learning_rate=lr, batch_size=batch)
        release_zeros(kd)
        return scores(kd)

    # Every setting is run with `n_seeds` shuffling seeds and averaged (4-epoch runs on
    # 1,000 test digits differ by ~1 pt from seed to seed). The learning rate is picked on
    # val for the cross-entropy runs; distillation uses it too.
    seeds = [seed + i for i in range(n_seeds)]
    ce_runs = {lr: mean([cross_entropy(lr, s) for s in seeds]) for lr in PRUNE_LRS}
    lr = max(ce_runs, key=lambda k: ce_runs[k][1])
    runs = {f"cross-entropy, Adam {k:g}": v for k, v in ce_runs.items()}
    kd_runs = {f"distillation T={T:g}, alpha {alpha:g}, Adam {lr:g}":
               mean([distilled(T, alpha, lr, s) for s in seeds]) for T, alpha in PRUNE_KD}
    runs.update(kd_runs)
    kd_best = max(kd_runs, key=lambda k: kd_runs[k][1])
    ce_key = f"cross-entropy, Adam {lr:g}"
    rows = [["dense teacher", "0%", f"{training.accuracy(teacher, ds.x_test, ds.y_test):.2%}",
             "-"],
            [f"{sparsity_goal:.0%} magnitude, no fine-tuning", f"{sparsity(pruned):.1%}",
             f"{p_acc:.2%}", "-"]]
    rows += [[f"+ {epochs} epochs {k}" + (" (chosen on val)" if k in (kd_best, ce_key) else ""),
              f"{sp:.1%}", f"{acc:.2%}", f"{val:.2%}"] for k, (acc, val, sp) in runs.items()]
    result = {"ce": runs[ce_key][0], "kd": runs[kd_best][0],
              "kd_setting": kd_best.replace("distillation ", ""),
              "sparsity": min(r[2] for r in runs.values())}
    return ("**95% one-shot magnitude pruning of the teacher** (`compress.pruning.prune`), "
            f"then {epochs} epochs of fine-tuning with the zeros held by "
            "`compress.pruning.keep_zeros`, the teacher's dropout scaled by sqrt(0.05) for the "
            "retraining (Han et al. 2015) in every run; the distillation runs' teacher is the "
            "dense model. The learning rate is picked on val among the cross-entropy runs and "
            "used by the distillation runs; T and alpha are picked on val. Accuracies are "
            f"means over {n_seeds} shuffling seeds.\n\n"
            + table(["model", "kernel sparsity", "test acc", "val acc"], rows)), result


def _parity(teacher, ds, epochs, lr, batch, alpha, seed) -> tuple[str, dict]:
    import keras
    import numpy as np

    from compress import training
    from compress.distillation import distill

    T = 4.0
    training.set_seed(seed + 1)
    init = _mlp(800, False, "student_2x800")

    training.set_seed(seed)
    ours, _ = distill(teacher, init, ds, temperature=T, alpha=alpha, epochs=epochs,
                      learning_rate=lr, batch_size=batch)

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
        training.set_seed(seed)
        distiller.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=batch,
                      validation_data=(ds.x_val, ds.y_val), shuffle=True, verbose=0)
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
            f"alpha {alpha}, {epochs} epochs, same seed and initial weights). With "
            "`loss=\"kl_divergence\"` (the default) `LogitsDistillation` gets the plain "
            "function, misses its `isinstance(loss, KLDivergence)` branch and compares the "
            "scaled outputs directly, with no softmax and no T^2 factor.\n\n"
            + table(["driver", "test acc", "max abs weight diff vs ours"], rows)), result


def _plot(ctx, results, t_acc) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for (label, row), color in zip(results.items(), ("C0", "C1")):
        for a, style in ((0.9, "o-"), (0.5, "s--")):
            temps = sorted(t for t, alpha in row["distilled"] if alpha == a)
            if temps:
                ax.plot(temps, [row["distilled"][(t, a)][0] * 100 for t in temps], style,
                        color=color, label=f"{label} distilled, alpha {a:g}")
        ax.axhline(row["alone"] * 100, color=color, ls=":", label=f"{label} alone")
    ax.axhline(t_acc * 100, color="black", ls="-", lw=0.8, label="teacher 2x1200")
    temps = sorted({t for row in results.values() for t, _ in row["distilled"]})
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = ctx.plot_dir / "distillation-temperature.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ctx.image(path, "test accuracy vs temperature")


CASES = {"distillation": case_distillation}
