"""Messages from the callbacks, printed the way Keras prints its own.

Keras's callbacks print through a private helper that follows
``keras.config.is_interactive_logging_enabled()``: to stdout when it is on, to the
``absl``-style log otherwise. This is the same rule through public API.

Example:

>>> print_msg("Epoch 3: early stop")
Epoch 3: early stop
"""

from __future__ import annotations

import logging
import sys

import keras

from compress import progress


def print_msg(message: str) -> None:
    """Print ``message`` like Keras's callbacks do (stdout, or the log without a console),
    on a clean line: a progress line being redrawn in the terminal is wiped first."""
    if keras.config.is_interactive_logging_enabled():
        progress.clear_line()
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logging.getLogger("keras").info(message)
