"""The options of the cascade training pass (no Keras import).

Kept apart from the implementation so that the CLI (``compress cascade --help``) and the
recipe validator can read them without importing TensorFlow.

Example:

>>> from compress.cascade.options import CASCADE_OPTIONS
>>> CASCADE_OPTIONS.validate({"k": 2})["epochs"]
2
"""

from compress.options import Option, Schema
from compress.passes import Pass
from compress.task import TASK_OPTIONS

CASCADE_OPTIONS = Schema("cascade", [
    Option("epochs", int, 2, "starting epochs per stage (stage l trains epochs + k*l)", low=0),
    Option("k", int, 1, "epochs added per stage index", low=0),
    Option("learning_rate", float, 1e-3, "learning rate at the start of each stage", low=0.0,
           low_inclusive=False),
    Option("optimizer", str, "adam", "optimizer", choices=("adam", "sgd", "rmsprop")),
    Option("batch_size", int, 64, "training batch size", low=1),
    Option("output_block", str, "auto", "temporary output block: auto (global pooling for "
           "feature maps), gap or flatten, then Dense softmax", choices=("auto", "gap",
                                                                          "flatten")),
    Option("plateau_patience", int, 1, "epochs without val_loss improvement before lr/10",
           low=0),
    Option("fine_tune_epochs", int, 0, "end-to-end fine-tune epochs after the cascade", low=0),
    Option("fine_tune_lr", float, None, "fine-tune learning rate (default learning_rate/10)",
           low=0.0, low_inclusive=False),
    Option("cache", str, "memory", "where pseudo-inputs live: memory, disk (memory-mapped) "
           "or stream (each batch through the frozen blocks, nothing kept; always so for "
           "streamed data such as image folders)", choices=("memory", "disk", "stream")),
    Option("seed", int, 0, "seed of initialisation and shuffling (the CLI's --seed)", low=0,
           cli=False),
    *TASK_OPTIONS,
])


def needs_data(opts: dict) -> list[str]:
    """Cascade training always trains on data."""
    return ["cascade training"]


PASS = Pass("cascade", "train a model block by block (Deep Cascade Learning, Marquez et al.)",
            "compress.cascade.cascade_pass:cascade_train", CASCADE_OPTIONS,
            needs_data=needs_data, trains=True, takes_callbacks=True, api="cascade_train",
            order=60)
