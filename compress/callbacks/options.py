"""Option schemas of the training callbacks, for recipes (no Keras import).

Kept apart from the implementations so that the recipe validator can read them without
importing TensorFlow. :func:`compress.callbacks.from_config.build_callbacks` builds the
callbacks from them.
"""

from compress.options import Option, Schema

CALLBACK_OPTIONS = {
    "early_stopping": Schema("early_stopping", [
        Option("monitor", str, "val_loss", "quantity to watch"),
        Option("patience", int, 5, "evaluations without improvement before stopping", low=0),
        Option("min_delta", float, 0.0, "smallest change that counts as improvement", low=0.0),
        Option("mode", str, "auto", "direction", choices=("auto", "min", "max")),
        Option("restore_best_weights", bool, True, "restore the best weights at the end"),
        Option("start_from_epoch", int, 0, "epochs before monitoring starts", low=0),
    ]),
    "cosine": Schema("cosine", [
        Option("peak_lr", float, None, "peak rate (default: the compiled rate)", low=0.0),
        Option("warmup_epochs", float, 0.0, "linear warmup length in epochs", low=0.0),
        Option("warmup_start", float, 0.0, "rate at the first warmup step", low=0.0),
        Option("period_epochs", float, None, "first cosine period (default: whole run)",
               low=0.0, low_inclusive=False),
        Option("period_mult", float, 1.0, "period multiplier at each restart", low=0.0,
               low_inclusive=False),
        Option("restart_decay", float, 1.0, "peak multiplier at each restart", low=0.0,
               low_inclusive=False),
        Option("floor", float, 0.0, "lowest rate", low=0.0),
    ]),
    "plateau": Schema("plateau", [
        Option("monitor", str, "val_loss", "quantity to watch"),
        Option("factor", float, 0.1, "rate multiplier on a plateau", low=0.0, high=1.0,
               low_inclusive=False, high_inclusive=False),
        Option("patience", int, 10, "epochs without improvement before a reduction", low=0),
        Option("min_delta", float, 1e-4, "smallest change that counts as improvement",
               low=0.0),
        Option("cooldown", int, 0, "epochs to wait after a reduction", low=0),
        Option("min_lr", float, 0.0, "floor for the rate", low=0.0),
        Option("mode", str, "auto", "direction", choices=("auto", "min", "max")),
    ]),
}
