"""Tumours inserted into liver tissue of a synthetic or template CT.

``insert_tumours_basic``: the v1 recipe (soft ellipsoids, a few per case).
``insert_lesions``: after Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023):
distorted ellipsoids placed where they do not collide with vessels, textured with scaled-up
Gaussian noise, with mass effect on the surrounding parenchyma; solitary large tumours, a few,
or many metastases (10-80 of 3-20 mm); hypo-, iso-with-rim-, hyperdense and heterogeneous
(necrotic) lesions; lesions at the liver surface bulge the contour and stay inside the label.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .scanner import smooth_noise as _smooth_noise

TUMOUR_KINDS = ("hypodense", "hyperdense", "rim_enhancing", "necrotic")
LESION_KINDS = ("hypodense", "iso_rim", "hyperdense", "heterogeneous", "cyst")
REGIMES = ("none", "solitary", "few", "multiple")


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


# ---------------------------------------------------------------------------- Hu et al. recipe
def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _scaled_noise(shape, rng, grain_vox: float) -> np.ndarray:
    """Gaussian noise drawn on a coarse grid and scaled up (Hu et al.'s tumour texture)."""
    coarse = [max(2, int(math.ceil(n / max(grain_vox, 1.0))) + 1) for n in shape]
    g = rng.standard_normal(coarse).astype(np.float32)
    up = ndimage.zoom(g, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True, mode="nearest")
    up = up[: shape[0], : shape[1], : shape[2]]
    if up.shape != tuple(shape):
        up = np.pad(up, [(0, n - u) for n, u in zip(shape, up.shape)], mode="edge")
    up = ndimage.gaussian_filter(up, 0.6)
    return up / (up.std() + 1e-6)


def draw_regime(rng: np.random.Generator, probs: dict | None = None) -> str:
    probs = probs or {"none": 0.2, "solitary": 0.25, "few": 0.25, "multiple": 0.3}
    keys = list(probs)
    p = np.array([probs[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def lesion_diameters(rng: np.random.Generator, regime: str) -> list[float]:
    if regime == "none":
        return []
    if regime == "solitary":
        return [float(math.exp(rng.uniform(math.log(20), math.log(120))))]
    if regime == "few":
        return [float(math.exp(rng.uniform(math.log(5), math.log(50)))) for _ in range(int(rng.integers(2, 8)))]
    return [float(math.exp(rng.uniform(math.log(3), math.log(20)))) for _ in range(int(rng.integers(10, 81)))]


def insert_lesions(img: np.ndarray, liver: np.ndarray, vessels: np.ndarray, free: np.ndarray,
                   spacing_zyx, base_hu: float, phase: str, rng: np.random.Generator,
                   diameters: list[float]) -> tuple[np.ndarray, list[dict]]:
    """Insert lesions into ``img`` (float32 HU, modified in place) inside ``liver``.

    ``vessels``: voxels lesions must not overlap (intrahepatic vessels); ``free``: voxels
    outside the liver a surface lesion may bulge into (fat). ``base_hu``: the parenchyma's HU
    without fat (tumours do not take up fat). Returns a lesion id map (uint8, 0 none) and one
    dict per placed lesion (``centre_index_zyx``, ``diameter_mm`` drawn, ``kind``, ``hu``).
    """
    sp = np.asarray(spacing_zyx, float)
    ids = np.zeros(liver.shape, np.uint8)
    infos: list[dict] = []
    if not diameters or liver.sum() < 200:
        return ids, infos
    depth = ndimage.distance_transform_edt(liver, sampling=sp).astype(np.float32)
    cand_all = np.argwhere(depth > 0)
    cand_depth = depth[tuple(cand_all.T)]
    order = np.argsort(cand_depth, kind="stable")
    cand_all, cand_depth = cand_all[order], cand_depth[order]
    n_all = len(cand_all)
    multiple = len(diameters) >= 10
    main_kind = _pick_kind(rng, phase)
    for d in sorted(diameters, reverse=True):
        if len(infos) >= 254:
            break
        r = d / 2.0
        kind = main_kind if (multiple and rng.uniform() < 0.8) else _pick_kind(rng, phase)
        surface = r >= 3.0 and rng.uniform() < 0.25
        placed = None
        for attempt in range(25):
            if attempt and attempt % 8 == 0:  # does not fit: a smaller lesion
                r = max(1.5, r * 0.8)
                d = 2 * r
            if surface:
                a, b = 0, int(np.searchsorted(cand_depth, 0.5 * r))
            else:
                a = int(np.searchsorted(cand_depth, min(0.8 * r, 0.7 * float(cand_depth[-1])), side="right")) if attempt < 20 else 0
                b = n_all
            if b <= a:
                break
            c = cand_all[rng.integers(a, b)]
            semi = r * rng.uniform(0.75, 1.15, 3)
            semi[int(rng.integers(3))] = r
            Rm = _rotation(rng)
            half = np.ceil(semi.max() * 1.6 / sp).astype(int) + 2
            lo = np.maximum(c - half, 0)
            hi = np.minimum(c + half + 1, liver.shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            zz, yy, xx = np.meshgrid(*(np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)), indexing="ij")
            dz, dy, dx = (zz - c[0]) * sp[0], (yy - c[1]) * sp[1], (xx - c[2]) * sp[2]
            acc = 0.0
            for k in range(3):
                u = np.float32(Rm[k, 0]) * dz + np.float32(Rm[k, 1]) * dy + np.float32(Rm[k, 2]) * dx
                acc = acc + (u / np.float32(semi[k])) ** 2
            rr = np.sqrt(acc)
            # distorted ellipsoid: low-frequency perturbation of the radius
            rr = rr + np.float32(rng.uniform(0.04, 0.15)) * _smooth_noise(rr.shape, rng, max(1.0, r / sp.mean() / 2.5))
            soft = rng.uniform(0.03, 0.2)  # blurred margin; the label is where the lesion is >= half
            inside = rr < 1.0 - soft / 2
            allowed = liver[sl] | (free[sl] & (depth[sl] == 0) & surface)
            shape_mask = inside & allowed
            n = int(shape_mask.sum())
            if n < 2:
                continue
            if r < 15.0 and np.any(ndimage.binary_dilation(shape_mask, iterations=1) & vessels[sl]):
                continue  # Hu et al.: never on a vessel (large masses may encase them: they replace them)
            if np.any(ids[sl][ndimage.binary_dilation(shape_mask, iterations=1)]):
                continue
            if surface and np.count_nonzero(inside & ~allowed) > 0.15 * np.count_nonzero(inside):
                if attempt >= 12:
                    surface = False  # no room at the surface here: an intrahepatic lesion instead
                continue  # would cut into another organ
            placed = (c, semi, sl, rr, shape_mask, soft)
            break
        if placed is None:
            continue
        c, semi, sl, rr, shape_mask, soft = placed
        _mass_effect(img, sl, c, lo_of(sl), sp, float(semi.mean()), rng, liver[sl])
        value = _lesion_value(kind, base_hu, phase, rr, rng, sp, r)
        weight = np.clip((1.0 - rr) / soft, 0, 1) * (liver[sl] | shape_mask)
        img[sl] = img[sl] * (1 - weight) + value * weight
        lid = len(infos) + 1
        ids[sl][shape_mask] = lid
        infos.append({"id": lid, "kind": kind, "centre_index_zyx": [float(v) for v in c], "diameter_mm": float(d),
                      "semi_axes_mm": [float(v) for v in semi], "surface": bool(surface),
                      "hu": float(np.mean(value[shape_mask])) if np.ndim(value) else float(value)})
    return ids, infos


def lo_of(sl) -> np.ndarray:
    return np.array([s.start for s in sl])


def _pick_kind(rng, phase) -> str:
    if phase == "non_contrast":
        return str(rng.choice(["hypodense", "iso_rim", "heterogeneous", "cyst"], p=[0.7, 0.1, 0.15, 0.05]))
    return str(rng.choice(list(LESION_KINDS), p=[0.5, 0.15, 0.15, 0.15, 0.05]))


def _lesion_value(kind, base_hu, phase, rr, rng, sp, r):
    tex_sigma = rng.uniform(4, 18)
    tex = _scaled_noise(rr.shape, rng, rng.uniform(1.0, 3.0)) * np.float32(tex_sigma)
    c = rng.uniform(20, 75)
    if kind == "cyst":
        return np.float32(rng.uniform(0, 18)) + tex * 0.2
    if kind == "hypodense":
        return np.float32(max(base_hu - c, 5.0)) + tex
    if kind == "hyperdense":
        return np.float32(base_hu + c) + tex
    if kind == "iso_rim":
        rim_frac = min(0.45, rng.uniform(1.5, 3.5) / max(r, 1.0))
        rim = np.clip((rr - (1 - rim_frac)) / 0.08, 0, 1)
        core = base_hu + rng.uniform(-15, 8)
        rim_hu = base_hu - rng.uniform(15, 30) if phase == "non_contrast" else base_hu + rng.uniform(30, 70)
        return np.float32(core) * (1 - rim) + np.float32(rim_hu) * rim + tex
    # heterogeneous: viable periphery, irregular necrotic centre
    necro = np.clip((rng.uniform(0.45, 0.7) + 0.15 * _scaled_noise(rr.shape, rng, 2.0) - rr) / 0.1, 0, 1)
    periphery = base_hu + (rng.uniform(-25, 30) if phase != "non_contrast" else -rng.uniform(10, 30))
    return np.float32(periphery) * (1 - necro) + np.float32(rng.uniform(5, 30)) * necro + tex


def _mass_effect(img: np.ndarray, sl, c, lo, sp, r: float, rng, liver: np.ndarray) -> None:
    """Push the parenchyma around a lesion outwards (radial displacement that decays with
    distance); only liver voxels change, so the liver's outline stays where its label is."""
    k = rng.uniform(0.15, 0.45)
    sub = img[sl]
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in sub.shape), indexing="ij")
    cl = (np.asarray(c) - lo).astype(np.float32)
    dz, dy, dx = zz - cl[0], yy - cl[1], xx - cl[2]
    dist = np.sqrt((dz * sp[0]) ** 2 + (dy * sp[1]) ** 2 + (dx * sp[2]) ** 2)
    f = 1.0 - np.float32(k) * np.exp(-((dist / np.float32(1.3 * r)) ** 2))
    src = [cl[0] + dz * f, cl[1] + dy * f, cl[2] + dx * f]
    warped = ndimage.map_coordinates(sub, src, order=1, mode="nearest")
    img[sl] = np.where(liver, warped, sub)
