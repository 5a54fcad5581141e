"""Shorthands the scaling tests use (not part of the library): both laws against N, and the
plain power law's prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from astropt.config import CI_LEVEL
from astropt.scaling import fit_scaling_laws, predict


def fit_saturating_power_law(N: Sequence[float], L: Sequence[float], ci_level: float = CI_LEVEL) -> dict:
    """Both laws against parameter count: :func:`astropt.scaling.fit_scaling_laws` with ``variable="N"``."""
    return fit_scaling_laws(N, L, variable="N", ci_level=ci_level)


def predict_power_law(fit: Mapping[str, Any], X: Sequence[float] | float) -> np.ndarray:
    """Evaluate the plain power law of a fit; see :func:`astropt.scaling.predict`."""
    return predict(fit, X, law="power_law")
