"""compress.callbacks.from_config: recipe mappings to callbacks, each field checked."""

from __future__ import annotations

import pytest

from compress.callbacks.from_config import build_callbacks
from compress.errors import CompressError


def test_callbacks_from_mappings():
    cbs = build_callbacks({"plateau": {"patience": 2}, "cosine": {"warmup_epochs": 1},
                           "early_stopping": None})
    assert [type(c).__name__ for c in cbs] == ["EarlyStopping", "CosineSchedule",
                                                "PlateauSchedule"]
    assert cbs[1].warmup_epochs == 1.0 and cbs[2].patience == 2 and cbs[0].patience == 5
    with pytest.raises(CompressError, match=r"steps\[0\]\.callbacks\.cosine\.floor"):
        build_callbacks({"cosine": {"floor": -1}}, path="steps[0].callbacks")
    with pytest.raises(CompressError, match="unknown callback"):
        build_callbacks({"swa": {}})
    with pytest.raises(CompressError, match="must be a mapping"):
        build_callbacks(["cosine"])
