"""Argument checks shared by the public functions."""
from __future__ import annotations

import numpy as np


def check_bool(name: str, value) -> bool:
    """``value`` as a bool, or a TypeError naming ``name``: bool(x) would take "False" as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__}).")
    return bool(value)
