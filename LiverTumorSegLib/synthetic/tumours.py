"""Tumours inserted into liver tissue of a synthetic or template CT."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .scanner import smooth_noise as _smooth_noise

TUMOUR_KINDS = ("hypodense", "hyperdense", "rim_enhancing", "necrotic")


def insert_tumours_basic(img: np.ndarray, liver: np.ndarray, spacing_zyx: np.ndarray, liver_hu: float,
                    phase: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[dict]]:
    """Draw n tumours inside the liver; returns the tumour mask and their descriptions (array space)."""
    tumour = np.zeros(liver.shape, bool)
    infos: list[dict] = []
    if n == 0 or liver.sum() < 50:
        return tumour, infos
    depth = ndimage.distance_transform_edt(liver, sampling=spacing_zyx)
    zz, yy, xx = np.indices(liver.shape, dtype=np.float32)
    for _ in range(n):
        radius = float(np.exp(rng.uniform(math.log(2.5), math.log(35.0))))
        ok = np.argwhere(depth > min(radius * 0.6, depth.max() * 0.8))
        if len(ok) == 0:
            continue
        c = ok[rng.integers(len(ok))]
        axes = radius * rng.uniform(0.7, 1.3, 3)
        # Crop a box around the tumour for speed.
        half = np.ceil(axes.max() * 1.4 / spacing_zyx).astype(int) + 2
        lo = np.maximum(c - half, 0)
        hi = np.minimum(c + half + 1, liver.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        dz = (zz[sl] - c[0]) * spacing_zyx[0]
        dy = (yy[sl] - c[1]) * spacing_zyx[1]
        dx = (xx[sl] - c[2]) * spacing_zyx[2]
        r = np.sqrt((dz / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dx / axes[2]) ** 2)
        lobes = 0.15 * _smooth_noise(r.shape, rng, max(1.0, radius / spacing_zyx.mean() / 3))
        rr = r + lobes
        mask = (rr < 1.0) & liver[sl]
        if mask.sum() < 3:
            continue
        kind = TUMOUR_KINDS[rng.integers(len(TUMOUR_KINDS))]
        if phase == "non_contrast" and kind in ("hyperdense", "rim_enhancing"):
            kind = "hypodense"
        contrast = rng.uniform(25, 75)
        margin = rng.uniform(0.0, 0.25)  # soft margin, as a fraction of the radius
        weight = np.clip((1.0 - rr) / max(margin, 1e-3), 0, 1) if margin > 0.02 else (rr < 1.0).astype(np.float32)
        weight = weight * liver[sl]
        if kind == "hypodense":
            value = liver_hu - contrast + 6 * _smooth_noise(r.shape, rng, 1.5)
        elif kind == "hyperdense":
            value = liver_hu + contrast + 6 * _smooth_noise(r.shape, rng, 1.5)
        elif kind == "rim_enhancing":
            rim = np.clip((rr - 0.65) / 0.2, 0, 1)
            value = (liver_hu - contrast) * (1 - rim) + (liver_hu + 0.7 * contrast) * rim
        else:  # necrotic centre
            core = np.clip((0.6 - rr) / 0.2, 0, 1)
            value = (liver_hu - 0.4 * contrast) * (1 - core) + rng.uniform(5, 25) * core
        img[sl] = img[sl] * (1 - weight) + value * weight
        tumour[sl] |= mask
        infos.append({"kind": kind, "radius_mm": radius, "centre_index_zyx": c.tolist()})
    return tumour, infos


