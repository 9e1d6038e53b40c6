"""Students derived from a teacher: narrower (width) or shallower (depth), fresh weights.

Example:

>>> from compress.models import build
>>> from compress.distillation import width_student, depth_student
>>> teacher = build("lenet300")
>>> width_student(teacher, 0.5).get_layer("fc1").units
150
>>> [layer.name for layer in depth_student(teacher, drop=1).layers]
['flatten', 'fc1', 'predictions']
"""

from __future__ import annotations

import copy
import re

import keras

from compress.errors import CompressError
from compress.layer_state import copy_assets, keep_config, read_config
from compress.runtime import float_dtype

# Config keys that set a layer's output width.
# Dense/RNN, Conv, Embedding, attention, and a KerasHub transformer block's feed-forward
_WIDTH_KEYS = ("units", "filters", "output_dim", "key_dim", "intermediate_dim")
# Those of them that stay inside the layer (its output keeps its width).
_INNER_KEYS = ("key_dim", "intermediate_dim")
# Layers that belong to the block of the weighted layer before them.
_FOLLOWERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
              keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
              keras.layers.Dropout, keras.layers.GaussianNoise)


def width_student(teacher, width: float = 0.25, name: str | None = None):
    """A copy of ``teacher``'s architecture with every hidden layer's width scaled.

    Units of ``Dense`` and recurrent layers (inside ``Bidirectional``,
    ``TimeDistributed`` and nested models too), filters of convolutions, an
    ``Embedding``'s ``output_dim`` and an attention layer's ``key_dim`` become
    ``max(1, round(n * width))``; the layers that produce the model's outputs keep their
    width (the classes). Weights are freshly initialised; constraints and regularisers in
    the layers' configs are kept.

    Example:

    >>> student = width_student(teacher, width=0.25)   # doctest: +SKIP

    Args:
        teacher: keras.Model. Sequential or functional; never modified.
        width: float, default 0.25. Width multiplier, in (0, 4].
        name: str, default None. The student's name (default ``<teacher>_w<width>``).

    Raises:
        CompressError: width out of range, or no layer to scale.
    """
    from compress.layers import register_layers

    if not isinstance(width, (int, float)) or isinstance(width, bool) or \
            not 0.0 < width <= 4.0:
        raise CompressError(f"width: must be in (0, 4.0], got {width!r}")
    for layer in teacher.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential) \
                and not hasattr(layer, "_operations"):  # Functional has them
            raise CompressError(f"teacher '{teacher.name}': its layer '{layer.name}' is a "
                                f"subclassed model ({type(layer).__name__}), whose widths "
                                "live in its own code; give --student FILE (a model taking "
                                "the same inputs)")
    outputs = _output_layers(teacher)
    scaled = []

    def build(keep: set):
        scaled.clear()

        def clone(layer):
            config, own = read_config(layer)  # its own, or read back (KerasHub's Llama)
            config = float_dtype(config)  # a Keras-quantized teacher: float student
            if _scaled(config, width, layer.name not in outputs,
                       inner_only=layer.name in keep):
                scaled.append(layer.name)
            new = layer.__class__.from_config(copy.deepcopy(config) if not own else config)
            return new if own else keep_config(new, config)

        return keras.models.clone_model(teacher, clone_function=clone)

    register_layers()
    try:
        student = build(set())
        if _widths(student) != _widths(teacher):
            # The output is a residual stream (a backbone's hidden states): the layers as
            # wide as it keep their width; the blocks' inner widths are scaled.
            student = build({la.name for la in teacher.layers
                             if _width(la) in _widths(teacher)})
    except CompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - a width the layers' configs do not hold
        text = " ".join(str(exc).split())
        found = re.search(r"calling (\w+)\.call\(\)\. (.*?)(?: Arguments received|$)", text)
        why = f"{found.group(1)}: {found.group(2)}" if found else text
        raise CompressError(
            f"teacher '{teacher.name}': its {width:g}-wide copy does not build ({why[:200]}); "
            "a width that no layer's config holds (a constant tensor in the graph, a "
            "reshape to a fixed size) stays the teacher's: give --student FILE (a model "
            "taking the same inputs)") from None
    if not scaled:
        raise CompressError(f"teacher '{teacher.name}': no hidden Dense or Conv layer to "
                            "scale by width")
    copy_assets(teacher, student)  # the teacher's vocabularies (a TextVectorization's)
    student.name = name or f"{teacher.name}_w{width:g}"
    return student


def _widths(model) -> list:
    return [t.shape[-1] for t in model.outputs]


def _width(layer):
    try:
        return layer.output.shape[-1]
    except (AttributeError, ValueError):  # not called once, or on several outputs
        return None


def _scaled(config: dict, width: float, scale: bool, inner_only: bool = False) -> bool:
    """Scale the widths of one layer's ``config`` in place (with ``scale``), and those of
    the layers a wrapper holds (Bidirectional's, TimeDistributed's) or a nested model
    holds, whose saved build shapes are dropped: they are built again for the student's
    narrower inputs. ``inner_only``: only the widths inside the layer (an attention's
    ``key_dim``, a transformer block's ``intermediate_dim``), not its output's. True when
    a width changed."""
    changed = False
    if scale:
        for key in _INNER_KEYS if inner_only else _WIDTH_KEYS:
            if isinstance(config.get(key), int):
                config[key] = max(1, round(config[key] * width))
                changed = True
    nested = config.get("layers")  # a nested model's layers, serialized
    inner = [config.get("layer"), config.get("backward_layer")]  # a wrapper's
    inner += nested if isinstance(nested, list) else []
    for item in inner:
        if isinstance(item, dict) and isinstance(item.get("config"), dict):
            item.pop("build_config", None)
            float_dtype(item["config"])
            changed = _scaled(item["config"], width, scale, inner_only) or changed
    return changed


def depth_student(teacher, drop=1, name: str | None = None):
    """A Sequential ``teacher`` with hidden blocks removed, freshly initialised.

    A block is a hidden Dense/Conv layer with the normalisation, activation and dropout
    layers right after it. ``drop`` removes the ``drop`` deepest hidden blocks (nearest
    the output), or the blocks of the named layers. The layer after a removed block
    adapts to its new input (a Dense takes any width, a convolution any channel count).

    Example:

    >>> student = depth_student(teacher, drop=1)   # doctest: +SKIP

    Args:
        teacher: keras.Sequential. Never modified.
        drop: int or list of str, default 1. How many hidden blocks to remove, or the
            names of their Dense/Conv layers. At least one hidden block stays.
        name: str, default None. The student's name (default ``<teacher>_d<n>``).

    Raises:
        CompressError: a non-Sequential teacher, ``drop`` out of range, unknown names,
            or a result whose output shape differs from the teacher's.
    """
    from compress.layers import register_layers

    if not isinstance(teacher, keras.Sequential):
        raise CompressError(f"teacher '{teacher.name}': depth students need a Sequential "
                            "model (use width=, or give a student file)")
    layers = list(teacher.layers)
    blocks = _hidden_blocks(layers)
    if isinstance(drop, bool) or not isinstance(drop, (int, list, tuple)):
        raise CompressError(f"depth: must be a number of blocks or a list of layer names, "
                            f"got {drop!r}")
    if isinstance(drop, int):
        if not 1 <= drop < len(blocks):
            raise CompressError(_depth_out_of_range(teacher, drop, len(blocks)))
        removed = blocks[len(blocks) - drop:]
    else:
        by_name = {layers[b[0]].name: b for b in blocks}
        unknown = [n for n in drop if n not in by_name]
        if unknown:
            raise CompressError(f"depth: '{unknown[0]}' is not a hidden Dense/Conv layer of "
                                f"'{teacher.name}' (hidden: {', '.join(by_name)})")
        removed = [by_name[n] for n in drop]
        if len(removed) >= len(blocks):
            raise CompressError(f"depth: at least one of the {len(blocks)} hidden blocks "
                                "must stay")
    gone = {i for block in removed for i in block}
    register_layers()
    kept = [_float_copy(layer) for i, layer in enumerate(layers) if i not in gone]
    student = keras.Sequential([keras.Input(teacher.inputs[0].shape[1:],
                                            dtype=teacher.inputs[0].dtype)] + kept,
                               name=name or f"{teacher.name}_d{len(removed)}")
    copy_assets(teacher, student)
    if tuple(student.outputs[0].shape) != tuple(teacher.outputs[0].shape):
        raise CompressError(f"depth: dropping those blocks changes the output shape to "
                            f"{tuple(student.outputs[0].shape[1:])}")
    return student


def _depth_out_of_range(teacher, drop: int, blocks: int) -> str:
    """Why ``depth=drop`` cannot be done: at least one of the ``blocks`` must stay."""
    if blocks < 2:
        return (f"depth {drop}: teacher '{teacher.name}' has {blocks} hidden block(s) and a "
                "student keeps at least one, so none can be dropped; use width or a "
                "student file")
    return (f"depth {drop}: the student can drop at most {blocks - 1} of the teacher's "
            f"{blocks} hidden blocks (teacher '{teacher.name}'; at least one must stay)")


def make_student(teacher, *, student=None, width=None, depth=None):
    """The student a CLI flag or recipe step asks for: a model, ``width`` or ``depth``.

    Args:
        teacher: keras.Model.
        student: keras.Model, default None. Used as is (copied by ``distill``).
        width: float, default None. See :func:`width_student`.
        depth: int, default None. See :func:`depth_student`.

    With none given, the student is ``width_student(teacher, 0.25)``.

    Raises:
        CompressError: more than one of the three given.
    """
    given = [k for k, v in (("student", student), ("width", width), ("depth", depth))
             if v is not None]
    if len(given) > 1:
        raise CompressError(f"distill: give one of student, width or depth, not "
                            f"{' and '.join(given)}")
    if student is not None:
        return student
    if depth is not None:
        return depth_student(teacher, drop=depth)
    return width_student(teacher, 0.25 if width is None else width)


def _output_layers(model) -> set:
    names = set()
    for t in model.outputs:
        history = getattr(t, "_keras_history", None)
        if history is not None:
            names.add(history.operation.name)
    if not names:
        names.add(model.layers[-1].name)
    return names


def _is_weighted(layer) -> bool:
    try:
        config = read_config(layer)[0]
    except ValueError:  # no config rebuilds it: not a block a depth student can drop
        return False
    return any(isinstance(config.get(k), int) for k in _WIDTH_KEYS)


def _hidden_blocks(layers) -> list[list[int]]:
    """Index lists of the hidden blocks (a weighted layer and its followers)."""
    last_weighted = max((i for i, lay in enumerate(layers) if _is_weighted(lay)), default=-1)
    blocks = []
    for i, layer in enumerate(layers):
        if i >= last_weighted or not _is_weighted(layer):
            continue
        block = [i]
        j = i + 1
        while j < last_weighted and isinstance(layers[j], _FOLLOWERS):
            block.append(j)
            j += 1
        blocks.append(block)
    return blocks


def _float_copy(layer):
    """A new float copy of ``layer`` from its config (:func:`read_config`)."""
    config, own = read_config(layer)
    config = float_dtype(config)
    new = layer.__class__.from_config(config if own else copy.deepcopy(config))
    return new if own else keep_config(new, config)
