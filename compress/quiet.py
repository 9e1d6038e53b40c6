"""Keep TensorFlow's and the converters' native log chatter off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_output():
    """Send the process's stdout/stderr file descriptors to /dev/null for a block.

    Native code (TensorFlow's C++ logging, the TFLite converter, tf2onnx) writes straight
    to the descriptors, which ``contextlib.redirect_stdout`` cannot catch. Set
    ``COMPRESS_DEBUG=1`` (``compress --debug``) to see everything.
    """
    if os.environ.get("COMPRESS_DEBUG") == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def import_tensorflow():
    """Import TensorFlow and Keras once, without the CUDA-probe lines they print."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet_output():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
