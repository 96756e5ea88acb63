"""Noise models of the phantoms: each scene's ``finish`` step, after anatomy and findings.

MRI: a smooth multiplicative bias field (exp of low-frequency cosines) and
Rician noise, the magnitude of signal plus complex Gaussian noise. CT:
Gaussian noise in HU, slightly correlated as after reconstruction filtering.
X-ray: slight blur, exposure and gamma variation, Gaussian quantum noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from radclip.data.phantoms.geometry import Grid, Rng, Waves

HU_RANGE = (-1024.0, 3071.0)


def _finish_mr(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Smooth multiplicative bias field, then Rician noise |signal + complex Gaussian|."""
    bias = np.exp(rng.uniform(0.08, 0.25) * Waves.random(rng, 4, wavelength=260.0, amplitude=1.0).at(grid.coords))
    sigma = rng.uniform(0.015, 0.04)
    real = image * bias.astype(np.float32) + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def _finish_ct(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Gaussian noise in HU, smoothed a little as by a reconstruction kernel."""
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, (0.0, 0.6, 0.6))  # in-plane correlation only, in pixels
    noise /= float(noise.std()) + 1e-6
    return np.clip(image + rng.uniform(8.0, 22.0) * noise, *HU_RANGE)


def _finish_xray(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Detector blur, exposure and gamma variation, quantum noise."""
    sigma_px = 1.5 / grid.pixel_mm  # detector and focal-spot blur of about 1.5 mm at any image size
    image = ndimage.gaussian_filter(image, (0.0, sigma_px, sigma_px))
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image = image * rng.uniform(0.9, 1.08) + rng.uniform(-0.03, 0.03)
    image += rng.uniform(0.008, 0.022) * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0)
