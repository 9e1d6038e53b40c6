"""Dense baselines shared by the cases, trained once per run and cached in the work dir
(``python -m bench`` removes the cached files when a run starts).

Example:

>>> model, ds = trained("lenet300", "mnist5k", ctx)   # doctest: +SKIP
"""

from __future__ import annotations

# name -> (data, epochs full, epochs quick, learning rate)
RECIPES = {
    ("lenet300", "mnist5k"): (30, 2, 1e-3),
    ("small-cnn", "animals"): (15, 1, 2e-3),
    ("small-cnn", "mnist5k"): (15, 1, 2e-3),
    ("lenet5", "mnist5k"): (15, 1, 1e-3),
}


def trained(name: str, data: str, ctx, epochs: int | None = None):
    """The dense ``name`` model trained on ``data`` (cached), and the prepared dataset.

    Full mode trains to convergence with early stopping on validation loss (best weights
    restored); quick mode trains briefly on a subset. Returns a fresh copy each call, so
    cases can't disturb each other.
    """
    import keras

    from compress import training
    from compress.data import load_data, prepare
    from compress.models import build

    full, quick, lr = RECIPES.get((name, data), (20, 1, 1e-3))
    n_epochs = epochs or ctx.size(quick, full)
    # Seeded before the model is built: the initial weights must not depend on what the
    # calling case did first (whichever case trains a baseline first, it is the same).
    training.set_seed(ctx.seed)
    model = build(name)
    ds = prepare(model, load_data(data, ctx.seed))
    if ctx.quick:
        ds = ds.take(600, 300)
    path = ctx.work_dir / f"baseline-{name}-{data}-s{ctx.seed}-e{n_epochs}-q{int(ctx.quick)}.keras"
    if path.exists():
        return training.copy_model(keras.models.load_model(path, compile=False)), ds
    training.set_seed(ctx.seed)
    training.compile_classifier(model, learning_rate=lr)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    training.fit(model, ds, epochs=n_epochs, callbacks=[stop], verbose=0)
    # Atomic: cases running in parallel child processes may train the same baseline.
    import os

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    # The same as a later call gets: the saved model, uncompiled.
    return training.copy_model(keras.models.load_model(path, compile=False)), ds
