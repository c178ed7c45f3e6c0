"""Anatomy-like synthetic images with noise, so lossless compression behaves as on real data.

Not random bytes (incompressible) and not constant images (trivially compressible): smooth
organ-like regions, sharp edges, and acquisition noise of realistic amplitude.
"""

from __future__ import annotations

import numpy as np


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def ct_slice(rng: np.random.Generator, z: float, size: int = 512) -> np.ndarray:
    """One axial chest/abdomen CT slice in stored values (HU + 1024), uint16, 12 bits used.

    z runs from 0 (neck) to 1 (pelvis) and shapes the lungs, heart and liver.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
    body = _ellipse(x, y, 0.5, 0.52, 0.40, 0.30)
    hu[body] = -90.0  # subcutaneous fat
    muscle = _ellipse(x, y, 0.5, 0.52, 0.37, 0.27)
    hu[muscle] = 45.0
    lung_size = max(0.0, np.sin(np.pi * min(1.0, z / 0.6)))
    if lung_size > 0.05:
        for cx in (0.34, 0.66):
            lung = _ellipse(x, y, cx, 0.5, 0.12 * lung_size + 0.01, 0.19 * lung_size + 0.01)
            # Lung parenchyma with vessel-like texture.
            texture = -850.0 + 60.0 * np.sin(40 * x + 7 * z) * np.cos(35 * y)
            hu[lung] = texture[lung]
    if 0.25 < z < 0.55:
        heart = _ellipse(x, y, 0.55, 0.47, 0.10, 0.09)
        hu[heart] = 40.0
    if z > 0.5:
        liver = _ellipse(x, y, 0.40, 0.5, 0.16 * min(1.0, (z - 0.5) * 4), 0.14)
        hu[liver] = 60.0
    spine = _ellipse(x, y, 0.5, 0.72, 0.035, 0.035)
    hu[spine] = 700.0
    cord = _ellipse(x, y, 0.5, 0.735, 0.012, 0.012)
    hu[cord] = 30.0
    ribs_ring = _ellipse(x, y, 0.5, 0.52, 0.355, 0.255) & ~_ellipse(x, y, 0.5, 0.52, 0.335, 0.235)
    ribs = ribs_ring & (np.sin(np.arctan2(y - 0.52, x - 0.5) * 9 + z * 20) > 0.3)
    hu[ribs] = 900.0
    # Quantum noise inside the patient only (air outside the body reads almost exactly -1000).
    noise = rng.normal(0.0, 12.0, size=(size, size)).astype(np.float32)
    hu = np.where(body, hu + noise, hu + rng.normal(0.0, 1.0, size=(size, size)))
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)


def mr_slice(rng: np.random.Generator, z: float, size: int = 256) -> np.ndarray:
    """One axial T1-like brain MR slice, uint16 with 12 bits used."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size), dtype=np.float32)
    scale = np.sin(np.pi * (0.15 + 0.7 * z))
    head = _ellipse(x, y, 0.5, 0.5, 0.36 * scale + 0.02, 0.44 * scale + 0.02)
    img[head] = 300.0  # scalp / skull marrow
    brain = _ellipse(x, y, 0.5, 0.5, 0.32 * scale, 0.40 * scale)
    img[brain] = 900.0  # grey matter
    white = _ellipse(x, y, 0.5, 0.5, 0.24 * scale, 0.31 * scale)
    img[white] = 1200.0 + 80 * np.cos(25 * x)[white]
    for cx in (0.45, 0.55):
        ventricle = _ellipse(x, y, cx, 0.47, 0.03 * scale, 0.09 * scale)
        img[ventricle] = 250.0
    # Rician-like background noise everywhere, as MR has.
    noise = np.abs(rng.normal(0, 18.0, size=(size, size)) + 1j * rng.normal(0, 18.0, (size, size)))
    img = img + noise.astype(np.float32)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def dx_image(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """A PA chest radiograph-like image, uint16 with 12 bits used."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 3600.0, dtype=np.float32)  # direct exposure: bright (inverted)
    thorax = _ellipse(x, y, 0.5, 0.55, 0.40, 0.45)
    img[thorax] = 1800.0 + 400.0 * y[thorax]
    for cx in (0.33, 0.67):
        lung = _ellipse(x, y, cx, 0.5, 0.14, 0.30)
        img[lung] = 2900.0 - 300.0 * np.abs(x - cx)[lung] * 4
    mediastinum = _ellipse(x, y, 0.52, 0.6, 0.09, 0.25)
    img[mediastinum] = 1500.0
    spine = (np.abs(x - 0.5) < 0.03) & thorax
    img[spine] = 1200.0
    img += rng.normal(0.0, 25.0, size=(size, size)).astype(np.float32)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)
