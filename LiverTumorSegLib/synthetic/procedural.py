"""Procedural synthetic abdominal CT with known liver and tumour labels.

The anatomy is defined in PHYSICAL space (LPS mm: +x patient left, +y posterior, +z
superior) by implicit shapes, and each voxel centre is classified into a tissue. So the same
seed gives the same anatomy whatever the grid: size, spacing, origin and direction
(identity, flipped, permuted, oblique, "RAS" directions) only change how it is sampled.

Tissues (portal-venous-like contrast): air outside the body (-1000), subcutaneous and
visceral fat (~-100), abdominal wall, diaphragm and back muscles (~45), lungs above the
diaphragm (~-850), heart, spine (cortical ~800, cancellous ~250, discs, spinal canal),
ribs, aorta (~170), inferior vena cava (~140), kidneys (~170, sinus fat), spleen (~115),
stomach with an air-fluid level, bowel loops with gas, gallbladder (~10), and the liver
(~80-110 HU, varied smooth shape from two lobes, perturbed) with enhancing vessels and
1-4 tumours (hypodense, hyperdense or rim-enhancing; diameters from a few mm to several
cm) fully inside the liver. Then a slight blur (partial volume) and Gaussian noise.

Labels: 0 background, 1 liver (parenchyma and its vessels), 2 tumour (inside the liver).
Deterministic for a seed: the anatomy is drawn first from the seed alone; the noise
depends on the seed and the grid size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..geometry import Geometry, check_direction

# tissue ids -> (HU, label)
AIR, FAT, MUSCLE, CORTICAL, CANCELLOUS, DISC, CSF, LUNG, AORTA, IVC = range(10)
KIDNEY, RENAL_SINUS, SPLEEN, GI_WALL, GI_CONTENT, GAS, GALLBLADDER, LIVER, LIVER_VESSEL, HEART = range(10, 20)
VISCERAL_FAT, RIB, DIAPHRAGM = 20, 21, 22
TUMOUR0 = 32  # tumour i uses ids TUMOUR0 + 2 i (core) and TUMOUR0 + 2 i + 1 (rim)
MAX_TUMOURS = (255 - TUMOUR0) // 2

BASE_HU = {
    AIR: -1000.0, FAT: -100.0, MUSCLE: 45.0, CORTICAL: 800.0, CANCELLOUS: 250.0, DISC: 90.0, CSF: 15.0,
    LUNG: -850.0, AORTA: 170.0, IVC: 140.0, KIDNEY: 170.0, RENAL_SINUS: -40.0, SPLEEN: 115.0, GI_WALL: 45.0,
    GI_CONTENT: 20.0, GAS: -950.0, GALLBLADDER: 10.0, LIVER: 100.0, LIVER_VESSEL: 160.0, HEART: 45.0,
    VISCERAL_FAT: -90.0, RIB: 600.0, DIAPHRAGM: 45.0,
}

TUMOUR_KINDS = ("hypodense", "hyperdense", "rim-enhancing")


@dataclass
class SyntheticCase:
    """A synthetic CT (float32 HU), its label map (uint8 0/1/2) and the tumours placed.

    ``tumours``: one dict per tumour: ``id``, ``kind``, ``centre`` (LPS mm), ``centre_index``
    (continuous (i, j, k)), ``semi_axes_mm``, ``radius_mm`` (mean semi-axis),
    ``diameter_mm`` (largest), ``volume_ml`` (of the shape), ``n_voxels`` and
    ``volume_ml_label`` (in the label map), ``hu``. ``params``: what was drawn (liver HU ...).
    """

    image: sitk.Image
    label: sitk.Image
    tumours: list = field(default_factory=list)
    params: dict = field(default_factory=dict)


# ============================================================================ sampling grid
class _Grid:
    def __init__(self, geo: Geometry, max_chunk: int = 4_000_000):
        self.geo = geo
        self.o = np.asarray(geo.origin, dtype=float)
        self.A = geo.index_to_physical_matrix
        self.Ainv = np.linalg.inv(self.A)
        self.size = geo.size
        self.max_chunk = max_chunk

    def box(self, lo, hi):
        """Index box (k0, k1, j0, j1, i0, i1) of voxel centres possibly inside a physical box."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = (corners - self.o) @ self.Ainv.T
        a = np.floor(idx.min(axis=0)).astype(int)
        b = np.ceil(idx.max(axis=0)).astype(int) + 1
        a = np.maximum(a, 0)
        b = np.minimum(b, self.size)
        if np.any(b <= a):
            return None
        return (a[2], b[2], a[1], b[1], a[0], b[0])

    def full(self):
        return (0, self.size[2], 0, self.size[1], 0, self.size[0])

    def chunks(self, box):
        k0, k1, j0, j1, i0, i1 = box
        per_slice = max(1, (j1 - j0) * (i1 - i0))
        step = max(1, self.max_chunk // per_slice)
        for k in range(k0, k1, step):
            yield (k, min(k1, k + step), j0, j1, i0, i1)

    def coords(self, box):
        """Physical x, y, z of the voxel centres of a box, as broadcastable float32 arrays."""
        k0, k1, j0, j1, i0, i1 = box
        idx = (
            np.arange(i0, i1, dtype=np.float32)[None, None, :],
            np.arange(j0, j1, dtype=np.float32)[None, :, None],
            np.arange(k0, k1, dtype=np.float32)[:, None, None],
        )
        out = []
        for p in range(3):
            c = np.float32(self.o[p]) + np.zeros((1, 1, 1), np.float32)
            for m in range(3):
                if abs(self.A[p, m]) > 1e-9:
                    c = c + np.float32(self.A[p, m]) * idx[m]
            out.append(c)
        return out


# ============================================================================ shapes
def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Ellipsoid:
    """Normalised implicit ellipsoid: f < 0 inside, f = |R (p - c) / a| - 1."""

    def __init__(self, centre, semi, rot=None):
        self.c = np.asarray(centre, float)
        self.a = np.asarray(semi, float)
        self.R = np.eye(3) if rot is None else np.asarray(rot, float)  # rows: local axes in LPS

    def bbox(self, margin=0.0):
        ext = np.sqrt(((self.R.T * self.a[None, :]) ** 2).sum(axis=1)) + margin
        return self.c - ext, self.c + ext

    def f(self, x, y, z):
        dx, dy, dz = x - np.float32(self.c[0]), y - np.float32(self.c[1]), z - np.float32(self.c[2])
        acc = 0.0
        for r in range(3):
            u = np.float32(self.R[r, 0]) * dx + np.float32(self.R[r, 1]) * dy + np.float32(self.R[r, 2]) * dz
            acc = acc + (u / np.float32(self.a[r])) ** 2
        return np.sqrt(acc) - 1.0

    def f_points(self, p):
        q = (np.atleast_2d(p) - self.c) @ self.R.T / self.a
        return np.linalg.norm(q, axis=1) - 1.0


def _smin(a, b, k):
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


class _Anatomy:
    """All random anatomy parameters, drawn from the seed (independent of the grid)."""

    def __init__(self, rng: np.random.Generator, scale: float, n_tumours, tumour_diameter_mm):
        s = float(scale)
        self.s = s
        u = rng.uniform
        # body: elliptic cylinder, deeper posteriorly (spine and back muscles)
        self.body_ax = 165 * s * u(0.9, 1.1)
        self.body_ay_ant = 115 * s * u(0.9, 1.1)
        self.body_ay_post = 1.35 * self.body_ay_ant  # the back: spine, kidneys and back muscles lie inside
        self.body_wobble = (u(0.0, 0.04), u(60, 140) * s, u(0, 2 * math.pi))
        self.fat = 22 * s * u(0.6, 1.5)
        self.wall = 11 * s * u(0.8, 1.2)
        # liver: two lobes, smooth union, low-frequency perturbation
        self.lz = 20 * s
        rl_c = np.array([-62 * s + u(-8, 8) * s, 8 * s + u(-8, 8) * s, self.lz + u(-8, 8) * s])
        rl_a = np.array([70, 72, 72]) * s * u(0.85, 1.1, 3)
        ll_c = np.array([12 * s + u(-10, 10) * s, -42 * s + u(-6, 6) * s, self.lz + 22 * s + u(-8, 8) * s])
        ll_a = np.array([58, 32, 38]) * s * u(0.75, 1.15, 3)
        self.liver_lobes = [_Ellipsoid(rl_c, rl_a, _rotation(rng, 12)), _Ellipsoid(ll_c, ll_a, _rotation(rng, 15))]
        self.liver_k = u(0.25, 0.45)
        self.liver_waves = []
        for _ in range(4):
            w = rng.normal(size=3)
            self.liver_waves.append((w / np.linalg.norm(w) * 2 * math.pi / (u(70, 160) * s), u(0, 2 * math.pi), u(0.02, 0.06)))
        self.liver_hu = u(80, 110)
        self.vessel_hu = self.liver_hu + u(40, 70)
        # diaphragm dome: z = dz0 - cx (x - xd)^2 - cy (y - yd)^2
        self.dome = (self.lz + 80 * s + u(-5, 5) * s, -45 * s, 5 * s, 0.0035 / s, 0.003 / s)
        # other organs (centres relative to the liver's level)
        lz = self.lz
        self.spleen = _Ellipsoid([92 * s, 45 * s, lz + 5 * s], np.array([42, 24, 50]) * s * u(0.85, 1.15, 3), _rotation(rng, 15))
        self.kidneys = [
            _Ellipsoid([sx * 68 * s, 45 * s, lz + (-75 if sx < 0 else -65) * s], np.array([26, 22, 52]) * s * u(0.9, 1.1, 3),
                       _rotation(rng, 12))
            for sx in (-1, 1)
        ]
        self.stomach = _Ellipsoid([55 * s, -30 * s, lz + 25 * s], np.array([50, 38, 42]) * s * u(0.8, 1.15, 3), _rotation(rng, 20))
        self.stomach_level = -30 * s - u(5, 20) * s  # air anterior (y below the level)
        self.gallbladder = _Ellipsoid([-28 * s, -30 * s, lz - 45 * s], np.array([14, 14, 30]) * s * u(0.8, 1.2, 3), _rotation(rng, 25))
        self.heart = _Ellipsoid([18 * s, -15 * s, lz + 125 * s], np.array([62, 52, 55]) * s, _rotation(rng, 10))
        self.aorta = (12 * s, 42 * s, 12 * s * u(0.85, 1.15))
        self.ivc = (-24 * s, 38 * s, 11 * s * u(0.85, 1.15))
        self.spine = (0.0, 72 * s, 20 * s)
        self.disc_period, self.disc_phase = 32 * s, u(0, 32 * s)
        self.bowel = []
        for _ in range(int(rng.integers(6, 12))):
            c = [u(-90, 90) * s, u(-70, 30) * s, lz + u(-170, -60) * s]
            r = u(10, 22) * s
            self.bowel.append((_Ellipsoid(c, [r * u(0.8, 1.6), r, r * u(0.8, 1.6)], _rotation(rng, 45)), rng.random() < 0.4))
        self.rib_period, self.rib_phase, self.rib_width = 30 * s, u(0, 30 * s), 10 * s
        # hepatic vessels: segments from the hilum to points in the liver
        hilum = np.array([-30 * s, 15 * s, lz - 10 * s])
        self.vessels = []
        for _ in range(int(rng.integers(4, 8))):
            for _try in range(50):
                tgt = rl_c + rng.normal(size=3) * rl_a * 0.5
                if self.liver_f_points(tgt)[0] < -0.15:
                    break
            self.vessels.append((hilum.copy(), tgt, u(2.5, 5.0) * s))
        self.tumours = self._place_tumours(rng, n_tumours, tumour_diameter_mm)

    # ---------------------------------------------------------------- implicit pieces
    def liver_f(self, x, y, z):
        f = _smin(self.liver_lobes[0].f(x, y, z), self.liver_lobes[1].f(x, y, z), self.liver_k)
        for w, ph, amp in self.liver_waves:
            f = f + np.float32(amp) * np.sin(np.float32(w[0]) * x + np.float32(w[1]) * y + np.float32(w[2]) * z + np.float32(ph))
        return f

    def liver_f_points(self, p):
        p = np.atleast_2d(np.asarray(p, float))
        return self.liver_f(p[:, 0], p[:, 1], p[:, 2])

    def dome_z(self, x, y):
        z0, xd, yd, cx, cy = self.dome
        return np.float32(z0) - np.float32(cx) * (x - np.float32(xd)) ** 2 - np.float32(cy) * (y - np.float32(yd)) ** 2

    def body_ellipse(self, x, y, z, shrink):
        amp, period, ph = self.body_wobble
        wob = 1.0 + np.float32(amp) * np.sin(z / np.float32(period) + np.float32(ph))
        ax = (np.float32(self.body_ax - shrink)) * wob
        ay = np.where(y > 0, np.float32(self.body_ay_post - shrink), np.float32(self.body_ay_ant - shrink)) * wob
        return (x / ax) ** 2 + (y / ay) ** 2

    def in_cavity_points(self, p):
        p = np.atleast_2d(np.asarray(p, float))
        return self.body_ellipse(p[:, 0], p[:, 1], p[:, 2], self.fat + self.wall) < 1.0

    def liver_inside_points(self, p, margin=0.0):
        p = np.atleast_2d(np.asarray(p, float))
        return (self.liver_f_points(p) < -margin) & self.in_cavity_points(p) & (p[:, 2] < self.dome_z(p[:, 0], p[:, 1]) - 3 * self.s)

    def liver_bbox(self):
        los, his = zip(*(lobe.bbox(0.0) for lobe in self.liver_lobes))
        return np.min(los, axis=0), np.max(his, axis=0)

    def _blockers(self):
        """Shapes painted over the liver: tumours must avoid them."""
        shapes = [self.gallbladder, self.spleen, self.stomach] + self.kidneys
        return shapes

    def _tube_dist(self, p, axis_xy, r):
        return np.hypot(p[:, 0] - axis_xy[0], p[:, 1] - axis_xy[1]) - r

    def _place_tumours(self, rng, n_tumours, diam_range):
        if isinstance(n_tumours, (int, np.integer)):
            n = int(n_tumours)
        else:
            lo, hi = n_tumours
            n = int(rng.integers(int(lo), int(hi) + 1))
        n = max(0, min(n, MAX_TUMOURS))
        dmin, dmax = (float(v) * self.s for v in diam_range)
        lo, hi = self.liver_bbox()
        dirs = np.array([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)], float)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        out = []
        for t in range(n):
            d = math.exp(rng.uniform(math.log(dmin), math.log(dmax)))
            kind = TUMOUR_KINDS[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
            placed = None
            for attempt in range(400):
                if attempt and attempt % 80 == 0:
                    d = max(dmin, d * 0.6)
                semi = d / 2 * rng.uniform(0.8, 1.0, 3)
                semi[int(rng.integers(3))] = d / 2  # the largest semi-axis is d / 2
                rot = _rotation(rng, 90)
                c = rng.uniform(lo, hi)
                shape = _Ellipsoid(c, semi, rot)
                surf = c + (dirs * semi[None, :]) @ rot  # points on the surface (local -> LPS)
                pts = np.vstack([c[None], surf, c + 1.15 * (surf - c)])
                if not np.all(self.liver_inside_points(pts, margin=0.0)):
                    continue
                if any(np.any(b.f_points(pts) < 0.05) for b in self._blockers()):
                    continue
                if np.any(self._tube_dist(pts, self.ivc[:2], self.ivc[2] + 2) < 0):
                    continue
                if any(np.linalg.norm(c - o["_shape"].c) < d / 2 + o["diameter_mm"] / 2 + 2.0 for o in out):
                    continue
                placed = shape
                break
            if placed is None:
                continue
            hu_delta = {"hypodense": -rng.uniform(30, 70), "hyperdense": rng.uniform(30, 70), "rim-enhancing": -rng.uniform(35, 70)}[kind]
            semi = placed.a
            out.append({
                "_shape": placed,
                "kind": kind,
                "centre": [float(v) for v in placed.c],
                "semi_axes_mm": [float(v) for v in semi],
                "radius_mm": float(np.mean(semi)),
                "diameter_mm": float(2 * np.max(semi)),
                "volume_ml": float(4.0 / 3.0 * math.pi * np.prod(semi) / 1000.0),
                "hu_delta": float(hu_delta),
                "rim_mm": float(min(3.0 * self.s, 0.25 * np.min(semi))) if kind == "rim-enhancing" else 0.0,
            })
        return out


# ============================================================================ painting
def _paint(tissue, grid: _Grid, box, fn, value, where=None):
    """tissue[voxels where fn(x, y, z) is True (and tissue in ``where``)] = value."""
    if box is None:
        return
    for ch in grid.chunks(box):
        k0, k1, j0, j1, i0, i1 = ch
        sub = tissue[k0:k1, j0:j1, i0:i1]
        m = fn(*grid.coords(ch))
        m = np.broadcast_to(m, sub.shape)
        if where is not None:
            m = m & np.isin(sub, where)
        np.copyto(sub, np.uint8(value), where=m)


def _segment_dist(x, y, z, a, b):
    """Distance of points to the segment a-b."""
    ab = b - a
    L2 = float(ab @ ab)
    t = ((x - np.float32(a[0])) * np.float32(ab[0]) + (y - np.float32(a[1])) * np.float32(ab[1])
         + (z - np.float32(a[2])) * np.float32(ab[2])) / np.float32(L2)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((x - (np.float32(a[0]) + t * np.float32(ab[0]))) ** 2 + (y - (np.float32(a[1]) + t * np.float32(ab[1]))) ** 2
                   + (z - (np.float32(a[2]) + t * np.float32(ab[2]))) ** 2)


def _render(an: _Anatomy, grid: _Grid) -> np.ndarray:
    s = an.s
    tissue = np.zeros(grid.geo.shape_zyx, dtype=np.uint8)  # AIR
    BIG = 1e5
    body_box = grid.box([-an.body_ax * 1.1, -an.body_ay_ant * 1.1, -BIG], [an.body_ax * 1.1, an.body_ay_ant * 1.1, BIG])
    cav = an.fat + an.wall

    _paint(tissue, grid, body_box, lambda x, y, z: an.body_ellipse(x, y, z, 0.0) < 1.0, FAT)
    _paint(tissue, grid, body_box, lambda x, y, z: an.body_ellipse(x, y, z, an.fat) < 1.0, MUSCLE)
    _paint(tissue, grid, body_box, lambda x, y, z: an.body_ellipse(x, y, z, cav) < 1.0, VISCERAL_FAT)
    # above the diaphragm: lungs, heart; the diaphragm itself is a muscle band
    z_top = an.dome[0]
    chest = grid.box([-an.body_ax, -an.body_ay_ant, z_top - 200 * s], [an.body_ax, an.body_ay_ant, BIG])
    _paint(tissue, grid, chest, lambda x, y, z: z > an.dome_z(x, y), DIAPHRAGM, where=[VISCERAL_FAT])
    _paint(tissue, grid, chest, lambda x, y, z: z > an.dome_z(x, y) + np.float32(6 * s), LUNG, where=[DIAPHRAGM])
    lo, hi = an.heart.bbox()
    _paint(tissue, grid, grid.box(lo, hi), lambda x, y, z: (an.heart.f(x, y, z) < 0) & (z > an.dome_z(x, y) + np.float32(3 * s)),
           HEART, where=[LUNG, DIAPHRAGM])
    # bowel loops and stomach (below the diaphragm, in the cavity)
    for shape, gas in an.bowel:
        lo, hi = shape.bbox()
        box = grid.box(lo, hi)
        _paint(tissue, grid, box, lambda x, y, z, sh=shape: sh.f(x, y, z) < 0, GI_WALL, where=[VISCERAL_FAT])
        inner = _Ellipsoid(shape.c, shape.a - 3 * s, shape.R)
        _paint(tissue, grid, box, lambda x, y, z, sh=inner: sh.f(x, y, z) < 0, GAS if gas else GI_CONTENT, where=[GI_WALL])
    lo, hi = an.stomach.bbox()
    box = grid.box(lo, hi)
    _paint(tissue, grid, box, lambda x, y, z: an.stomach.f(x, y, z) < 0, GI_WALL, where=[VISCERAL_FAT, GI_WALL, GI_CONTENT, GAS])
    inner = _Ellipsoid(an.stomach.c, an.stomach.a - 4 * s, an.stomach.R)
    _paint(tissue, grid, box, lambda x, y, z: inner.f(x, y, z) < 0, GI_CONTENT, where=[GI_WALL])
    _paint(tissue, grid, box, lambda x, y, z: (inner.f(x, y, z) < 0) & (y < np.float32(an.stomach_level)), GAS, where=[GI_CONTENT])
    # liver (cavity, below the dome) and its vessels
    lo, hi = an.liver_bbox()
    lbox = grid.box(lo - 15 * s, hi + 15 * s)
    _paint(tissue, grid, lbox, lambda x, y, z: (an.liver_f(x, y, z) < 0) & (z < an.dome_z(x, y) - np.float32(3 * s)), LIVER,
           where=[VISCERAL_FAT, GI_WALL, GI_CONTENT, GAS])
    for a, b, r in an.vessels:
        vlo, vhi = np.minimum(a, b) - r, np.maximum(a, b) + r
        _paint(tissue, grid, grid.box(vlo, vhi), lambda x, y, z, a=a, b=b, r=r: _segment_dist(x, y, z, a, b) < np.float32(r),
               LIVER_VESSEL, where=[LIVER])
    # organs painted over the liver's margins
    lo, hi = an.gallbladder.bbox()
    _paint(tissue, grid, grid.box(lo, hi), lambda x, y, z: an.gallbladder.f(x, y, z) < 0, GALLBLADDER, where=[VISCERAL_FAT, LIVER, LIVER_VESSEL, GI_WALL, GI_CONTENT])
    lo, hi = an.spleen.bbox()
    _paint(tissue, grid, grid.box(lo, hi), lambda x, y, z: (an.spleen.f(x, y, z) < 0) & (z < an.dome_z(x, y)), SPLEEN,
           where=[VISCERAL_FAT, GI_WALL, GI_CONTENT, GAS, LIVER, LIVER_VESSEL])
    for kid in an.kidneys:
        lo, hi = kid.bbox()
        box = grid.box(lo, hi)
        _paint(tissue, grid, box, lambda x, y, z, k=kid: k.f(x, y, z) < 0, KIDNEY, where=[VISCERAL_FAT, GI_WALL, GI_CONTENT, GAS, LIVER, LIVER_VESSEL, MUSCLE, FAT])
        sinus = _Ellipsoid(kid.c + np.array([-np.sign(kid.c[0]) * 8 * s, -4 * s, 0]), kid.a * np.array([0.35, 0.4, 0.55]), kid.R)
        _paint(tissue, grid, box, lambda x, y, z, k=sinus: k.f(x, y, z) < 0, RENAL_SINUS, where=[KIDNEY])
    # vessels and psoas along z
    for (cx, cy, r), val in ((an.aorta, AORTA), (an.ivc, IVC)):
        box = grid.box([cx - r, cy - r, -BIG], [cx + r, cy + r, an.dome[0] + 40 * s])
        _paint(tissue, grid, box, lambda x, y, z, cx=cx, cy=cy, r=r: (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2 < np.float32(r * r), val)
    for sx in (-1, 1):
        psoas = (sx * 36 * s, 58 * s)
        box = grid.box([psoas[0] - 20 * s, psoas[1] - 20 * s, -BIG], [psoas[0] + 20 * s, psoas[1] + 20 * s, an.lz - 40 * s])
        _paint(tissue, grid, box, lambda x, y, z, p=psoas: ((x - np.float32(p[0])) / np.float32(13 * s)) ** 2
               + ((y - np.float32(p[1])) / np.float32(15 * s)) ** 2 < 1.0, MUSCLE, where=[VISCERAL_FAT, GI_WALL, GI_CONTENT, GAS])
        para = (sx * 38 * s, 108 * s)
        box = grid.box([para[0] - 30 * s, para[1] - 25 * s, -BIG], [para[0] + 30 * s, para[1] + 25 * s, BIG])
        _paint(tissue, grid, box, lambda x, y, z, p=para: ((x - np.float32(p[0])) / np.float32(26 * s)) ** 2
               + ((y - np.float32(p[1])) / np.float32(20 * s)) ** 2 < 1.0, MUSCLE)
    # spine: vertebral bodies with discs, canal, posterior arch
    sx0, sy0, sr = an.spine
    box = grid.box([sx0 - sr, sy0 - sr, -BIG], [sx0 + sr, sy0 + sr, BIG])

    def _disc(z):
        return np.mod(z - np.float32(an.disc_phase), np.float32(an.disc_period)) < np.float32(7 * s)

    _paint(tissue, grid, box, lambda x, y, z: (x - np.float32(sx0)) ** 2 + (y - np.float32(sy0)) ** 2 < np.float32(sr * sr), CORTICAL)
    _paint(tissue, grid, box, lambda x, y, z: (x - np.float32(sx0)) ** 2 + (y - np.float32(sy0)) ** 2 < np.float32((sr - 3 * s) ** 2), CANCELLOUS)
    _paint(tissue, grid, box, lambda x, y, z: ((x - np.float32(sx0)) ** 2 + (y - np.float32(sy0)) ** 2 < np.float32(sr * sr)) & _disc(z), DISC)
    cy = sy0 + sr + 10 * s
    box = grid.box([sx0 - 20 * s, cy - 16 * s, -BIG], [sx0 + 20 * s, cy + 45 * s, BIG])
    _paint(tissue, grid, box, lambda x, y, z: ((x - np.float32(sx0)) ** 2 + (y - np.float32(cy)) ** 2 < np.float32((16 * s) ** 2))
           & (y > np.float32(cy - 6 * s)), CORTICAL)
    _paint(tissue, grid, box, lambda x, y, z: (np.abs(x - np.float32(sx0)) < np.float32(4 * s)) & (y > np.float32(cy)) & (y < np.float32(cy + 40 * s)), CORTICAL)
    _paint(tissue, grid, box, lambda x, y, z: (x - np.float32(sx0)) ** 2 + (y - np.float32(cy)) ** 2 < np.float32((9 * s) ** 2), CSF)
    # ribs: slanted bands in the body wall, over the liver and spleen levels, not at the front midline
    z_lo, z_hi = an.lz - 70 * s, an.dome[0] + 200 * s
    box = grid.box([-an.body_ax, -an.body_ay_ant, z_lo], [an.body_ax, an.body_ay_ant, z_hi])

    def _ribs(x, y, z):
        e_out = an.body_ellipse(x, y, z, an.fat + 1 * s)
        e_in = an.body_ellipse(x, y, z, an.fat + an.wall - 1 * s)
        shell = (e_out < 1.0) & (e_in >= 1.0)
        slant = np.float32(40 * s) * (np.float32(1.0) - y / np.float32(an.body_ay_ant))
        band = np.mod(z + slant - np.float32(an.rib_phase), np.float32(an.rib_period)) < np.float32(an.rib_width)
        front = (np.abs(x) < np.float32(45 * s)) & (y < 0)
        return shell & band & ~front & (z > np.float32(z_lo)) & (z < np.float32(z_hi))

    _paint(tissue, grid, box, _ribs, RIB, where=[MUSCLE])
    # tumours (only over liver tissue)
    for t_i, t in enumerate(an.tumours):
        sh = t["_shape"]
        lo, hi = sh.bbox()
        box = grid.box(lo, hi)
        core = TUMOUR0 + 2 * t_i
        _paint(tissue, grid, box, lambda x, y, z, sh=sh: sh.f(x, y, z) < 0, core, where=[LIVER, LIVER_VESSEL])
        if t["rim_mm"] > 0:
            inner = _Ellipsoid(sh.c, sh.a - t["rim_mm"], sh.R)
            _paint(tissue, grid, box, lambda x, y, z, sh=inner: sh.f(x, y, z) >= 0, core + 1, where=[core])
    return tissue


# ============================================================================ public API
_TRUNCATE = 3.0


def _gauss_kernel(sigma: float) -> np.ndarray:
    """The normalised 1D kernel scipy.ndimage.gaussian_filter uses for ``sigma``."""
    r = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _as_direction(direction) -> tuple[float, ...]:
    if direction is None:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    m = check_direction(np.asarray(direction, dtype=float).ravel())
    return tuple(float(v) for v in m.ravel())


def _default_origin(an: _Anatomy, size, spacing, direction) -> tuple[float, ...]:
    """Centre the field of view on the body (x, y) and liver (z), shifted so that as much of the
    liver as possible is inside a small field of view."""
    d = np.asarray(direction, float).reshape(3, 3)
    half_index = (np.asarray(size, float) - 1) / 2.0
    half_ext = (np.abs(d) * (np.asarray(size, float) * np.asarray(spacing, float))[None, :]).sum(axis=1) / 2.0
    llo, lhi = an.liver_bbox()
    lc = (llo + lhi) / 2
    pref = np.array([0.0, 0.0, lc[2]])
    centre = np.empty(3)
    for p in range(3):
        a, b = lhi[p] - half_ext[p], llo[p] + half_ext[p]  # centre range keeping the liver inside
        centre[p] = np.clip(pref[p], a, b) if a <= b else lc[p]
    origin = centre - d @ (half_index * np.asarray(spacing, float))
    return tuple(float(v) for v in origin)


def make_synthetic_ct(
    size: Sequence[int] = (128, 128, 48),
    spacing: Sequence[float] = (3.0, 3.0, 5.0),
    direction: Optional[Sequence[float]] = None,
    origin: Optional[Sequence[float]] = None,
    seed: int = 0,
    n_tumours: Union[int, tuple[int, int]] = (1, 4),
    tumour_diameter_mm: tuple[float, float] = (5.0, 60.0),
    noise_hu: float = 15.0,
    blur_mm: float = 1.0,
    scale: float = 1.0,
    dtype: str = "float32",
) -> SyntheticCase:
    """A synthetic abdominal CT with liver (label 1) and tumours (label 2) on any grid.

    ``size``/``spacing`` are (x, y, z); ``direction`` is a row-major 3x3 orthonormal matrix
    (None = identity); ``origin`` None centres the field of view on the body in-plane and on
    the liver in z (moved towards the liver when the field of view is small). The anatomy is
    in physical mm (``scale`` scales all of it), drawn from ``seed`` only, so grids with
    different directions or spacings see the same patient. ``n_tumours``: a count or an
    inclusive (min, max) range (fewer are placed if they do not fit in the liver, e.g. with a
    small ``scale``); ``tumour_diameter_mm``: range of the largest diameter (log-uniform, in
    unscaled mm). ``noise_hu``: noise standard deviation; ``blur_mm``: Gaussian blur sigma.
    ``dtype``: "float32" (like ``image_io.read_image``) or "int16". Values are integer HU.
    """
    size = tuple(int(v) for v in size)
    spacing = tuple(float(v) for v in spacing)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"size must be three positive integers, got {size}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers, got {spacing}")
    direction = _as_direction(direction)
    rng = np.random.default_rng(seed)
    an = _Anatomy(rng, scale, n_tumours, tumour_diameter_mm)
    if origin is None:
        origin = _default_origin(an, size, spacing, direction)
    geo = Geometry(size=size, spacing=spacing, origin=tuple(float(v) for v in origin), direction=direction)
    grid = _Grid(geo)
    tissue = _render(an, grid)

    # intensities
    lut = np.zeros(256, dtype=np.float32)
    for k, v in BASE_HU.items():
        lut[k] = v
    lut[LIVER], lut[LIVER_VESSEL] = an.liver_hu, an.vessel_hu
    labels = np.zeros(256, dtype=np.uint8)
    labels[[LIVER, LIVER_VESSEL]] = 1
    for i, t in enumerate(an.tumours):
        core = TUMOUR0 + 2 * i
        lut[core] = an.liver_hu + t["hu_delta"]
        lut[core + 1] = an.liver_hu + rng.uniform(35, 60)  # enhancing rim
        labels[[core, core + 1]] = 2
        t["hu"] = float(lut[core])
    hu = lut[tissue]
    # Noise is added BEFORE the blur: like real CT noise it is then spatially correlated and,
    # summing many uniform draws, close to Gaussian (and uniform draws are cheap). Its
    # amplitude is set so that the standard deviation after the blur is ``noise_hu``.
    sigma = [blur_mm / sp if blur_mm and blur_mm > 0 else 0.0 for sp in spacing[::-1]]
    sigma = [s_ if s_ >= 0.25 else 0.0 for s_ in sigma]
    noise_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
    if noise_hu and noise_hu > 0:
        if any(sigma):
            gain = float(np.prod([np.sum(_gauss_kernel(s_) ** 2) for s_ in sigma if s_ > 0]))
            half = np.float32(noise_hu * math.sqrt(3.0 / gain))
            u = noise_rng.random(hu.shape, dtype=np.float32)
            u -= np.float32(0.5)
            u *= np.float32(2.0) * half
            hu += u
            del u
        else:
            hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    if any(sigma):
        from scipy import ndimage

        hu = ndimage.gaussian_filter(hu, sigma, truncate=_TRUNCATE, output=np.float32)
    np.round(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    label = labels[tissue]

    image = geo.image_from_array(hu.astype(np.int16) if dtype == "int16" else hu)
    label_img = geo.image_from_array(label)

    voxel_ml = float(np.prod(spacing)) / 1000.0
    tumours = []
    ids = TUMOUR0 + 2 * np.arange(len(an.tumours))
    counts = np.bincount(tissue[tissue >= TUMOUR0], minlength=256)  # tumour voxels only (fast)
    for i, t in enumerate(an.tumours):
        n_vox = int(counts[ids[i]] + counts[ids[i] + 1])
        entry = {k: v for k, v in t.items() if not k.startswith("_")}
        entry["id"] = i + 1
        entry["centre_index"] = [float(v) for v in geo.physical_to_index(t["centre"])[0]]
        entry["n_voxels"] = n_vox
        entry["volume_ml_label"] = n_vox * voxel_ml
        tumours.append(entry)
    params = {
        "seed": int(seed),
        "size": list(size),
        "spacing": list(spacing),
        "direction": list(direction),
        "origin": list(geo.origin),
        "scale": float(scale),
        "liver_hu": float(an.liver_hu),
        "noise_hu": float(noise_hu),
        "blur_mm": float(blur_mm),
        "liver_volume_ml": float(np.count_nonzero(label) * voxel_ml),
    }
    return SyntheticCase(image=image, label=label_img, tumours=tumours, params=params)
