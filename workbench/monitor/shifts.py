"""Shifts a drift study applies to clean images in [0, 1] pixels, (N, H, W): rotation, Gaussian
noise, and a change of class priors (which images are drawn, not how they look)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotate(
    images: np.ndarray, degrees: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Each image turned by ``degrees`` about its centre, nearest-neighbour: pixels keep their
    values. (Bilinear resampling blurs, and the tests detect the blur alone: a turn of 5° and back
    is flagged in every batch; see ``resampled``.)"""
    if degrees == 0:
        return images.copy()
    return ndimage.rotate(images, degrees, axes=(1, 2), reshape=False, order=0, mode="constant")


def resampled(
    images: np.ndarray, degrees: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A control for ``rotate``: turned by ``degrees`` and back, so the digits stand upright and
    only the resampling's loss of pixels remains. A test that flags these reacts to artefacts."""
    return rotate(rotate(images, degrees), -degrees)


def noise(images: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian pixel noise of standard deviation ``sigma``, clipped to [0, 1]."""
    rng = rng or np.random.default_rng(0)
    noisy = images + rng.normal(0.0, sigma, size=images.shape)
    return np.clip(noisy, 0.0, 1.0).astype(images.dtype)


SHIFTS = {"rotation": rotate, "resampled": resampled, "noise": noise}  # name → f(images, size, rng)


def draw(
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    classes: tuple[int, ...] = (),
    strength: float = 0.0,
) -> np.ndarray:
    """Row indices of a batch of ``size`` drawn without replacement. With ``strength`` s > 0, a
    share s of the batch comes from ``classes`` only and the rest from all rows: a prior shift."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength: must lie in [0, 1], got {strength}")
    if strength == 0 or not classes:
        return rng.choice(len(labels), size=size, replace=False)
    favoured = np.flatnonzero(np.isin(labels, classes))
    k = int(round(strength * size))
    chosen = rng.choice(favoured, size=min(k, len(favoured)), replace=False)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return np.concatenate([chosen, rng.choice(rest, size=size - len(chosen), replace=False)])
