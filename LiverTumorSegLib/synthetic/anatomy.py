"""Procedural anatomy added to a template's label map ("canvas"): chest above the template
(heart with chambers and myocardium, aorta and great vessels, pulmonary vessels, lungs,
trachea, oesophagus, ribs, body wall), the domes of organs cut by the template's top slice,
and the intrahepatic portal and hepatic veins.

The canvas is an LPS-aligned (identity direction) label map at ``spacing`` mm with the
template's TotalSegmentator ids (1..117) plus the ids below; everything is drawn in the
canvas' physical space, so one random deformation moves it all together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# ids beyond TotalSegmentator's 1..117 (TotalSegmentator ids are reused where they exist:
# 12 lung, 15 oesophagus, 16 trachea, 52 aorta, 54 brachiocephalic trunk, 56 left subclavian,
# 58 left carotid, 62 SVC, 63 IVC, 100 rib, 117 costal cartilage)
LV, RV, LA, RA, MYOCARDIUM, PULM_ARTERY, PULM_VEIN, MEDIASTINAL_FAT, DIAPHRAGM = range(120, 129)
PORTAL_IN, HEPATIC_IN, ASCITES, AIRWAY_AIR = 130, 131, 132, 133
LIVER_IDS = (5, PORTAL_IN, HEPATIC_IN)
LUNG_ID = 12
VERTEBRA_IDS = tuple(range(26, 51))
SPINE_COPY_IDS = VERTEBRA_IDS + (79, 86, 87)  # vertebrae, spinal cord, autochthon muscles


@dataclass
class Canvas:
    """Label map and CT (z, y, x) on an LPS-aligned grid; ``k_top``: last template slice."""

    labels: np.ndarray
    ct: np.ndarray
    origin: np.ndarray  # (x, y, z) of voxel (0, 0, 0)
    spacing: float
    k_top: int

    def phys(self, k, j, i):
        s = self.spacing
        return (self.origin[0] + s * np.asarray(i, float), self.origin[1] + s * np.asarray(j, float),
                self.origin[2] + s * np.asarray(k, float))

    def index(self, p):
        return (np.asarray(p, float) - self.origin) / self.spacing  # (i, j, k)

    @property
    def z_top(self) -> float:
        return float(self.origin[2] + self.spacing * self.k_top)


# ---------------------------------------------------------------------------- rasterising
def _box(cv: Canvas, lo, hi):
    """Index slices (k, j, i) of a physical box, clipped; None when empty."""
    a = np.floor(cv.index(lo)).astype(int)
    b = np.ceil(cv.index(hi)).astype(int) + 1
    shape = cv.labels.shape[::-1]
    a = np.maximum(a, 0)
    b = np.minimum(b, shape)
    if np.any(b <= a):
        return None
    return (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))


def _coords(cv: Canvas, sl):
    k = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None, None]
    j = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :, None]
    i = np.arange(sl[2].start, sl[2].stop, dtype=np.float32)[None, None, :]
    s = np.float32(cv.spacing)
    return (np.float32(cv.origin[0]) + s * i, np.float32(cv.origin[1]) + s * j, np.float32(cv.origin[2]) + s * k)


def paint_tube(cv: Canvas, a, b, r, value, where=None, ct_value=None, not_where=None) -> None:
    """Voxels within ``r`` mm of the segment a-b get ``value`` (only over ids in ``where``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    sl = _box(cv, np.minimum(a, b) - r - cv.spacing, np.maximum(a, b) + r + cv.spacing)
    if sl is None:
        return
    x, y, z = _coords(cv, sl)
    ab = b - a
    L2 = max(float(ab @ ab), 1e-6)
    t = ((x - np.float32(a[0])) * np.float32(ab[0]) + (y - np.float32(a[1])) * np.float32(ab[1])
         + (z - np.float32(a[2])) * np.float32(ab[2])) / np.float32(L2)
    t = np.clip(t, 0.0, 1.0)
    d2 = ((x - np.float32(a[0]) - t * np.float32(ab[0])) ** 2 + (y - np.float32(a[1]) - t * np.float32(ab[1])) ** 2
          + (z - np.float32(a[2]) - t * np.float32(ab[2])) ** 2)
    _apply(cv, sl, d2 < np.float32(r * r), value, where, ct_value, not_where)


def paint_ellipsoid(cv: Canvas, c, semi, R, value, where=None, ct_value=None, not_where=None, extra=None) -> None:
    """Ellipsoid (centre, semi-axes, rows of R = local axes in LPS)."""
    c, semi, R = np.asarray(c, float), np.asarray(semi, float), np.asarray(R, float)
    ext = np.sqrt(((R.T * semi[None, :]) ** 2).sum(axis=1))
    sl = _box(cv, c - ext - cv.spacing, c + ext + cv.spacing)
    if sl is None:
        return
    x, y, z = _coords(cv, sl)
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    acc = 0.0
    for r in range(3):
        u = np.float32(R[r, 0]) * dx + np.float32(R[r, 1]) * dy + np.float32(R[r, 2]) * dz
        acc = acc + (u / np.float32(semi[r])) ** 2
    m = acc < 1.0
    if extra is not None:
        m = m & extra(x, y, z)
    _apply(cv, sl, m, value, where, ct_value, not_where)


def _apply(cv: Canvas, sl, m, value, where, ct_value, not_where) -> None:
    sub = cv.labels[sl]
    m = np.broadcast_to(m, sub.shape)
    if where is not None:
        m = m & np.isin(sub, where)
    if not_where is not None:
        m = m & ~np.isin(sub, not_where)
    sub[m] = value
    if ct_value is not None:
        cv.ct[sl][m] = ct_value


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / max(np.linalg.norm(v), 1e-9)


def _polyline(cv: Canvas, pts, radii, value, **kw) -> None:
    for p, q, r in zip(pts[:-1], pts[1:], radii):
        paint_tube(cv, p, q, r, value, **kw)


# ---------------------------------------------------------------------------- chest
def draw_chest(cv: Canvas, rng: np.random.Generator) -> dict:
    """Fill the canvas above the template's top slice with a chest; complete the organ domes.

    Returns landmarks (physical z of the liver dome, heart, arch) for field-of-view choices.
    """
    s = cv.spacing
    kt = cv.k_top
    nz = cv.labels.shape[0]
    top_lab = cv.labels[kt].copy()
    top_ct = cv.ct[kt].copy()
    body2d = ndimage.binary_fill_holes(top_ct > -500)
    lab_cc, n_cc = ndimage.label(body2d)
    if n_cc > 1:
        sizes = ndimage.sum(body2d, lab_cc, range(1, n_cc + 1))
        body2d = lab_cc == (1 + int(np.argmax(sizes)))
    dskin = ndimage.distance_transform_edt(body2d) * s
    organs = np.isin(top_lab, (5, 1, 6, 20, 10, 11, 12, 13, 14, 18, 19))
    wall = float(np.clip(np.percentile(dskin[organs], 2) if organs.any() else 25.0, 10.0, 45.0))
    spine2d = np.isin(top_lab, SPINE_COPY_IDS)
    spine_zone = ndimage.binary_dilation(spine2d, iterations=2)
    cavity2d = body2d & (dskin > wall) & ~spine_zone
    jj, ii = np.nonzero(np.isin(top_lab, VERTEBRA_IDS))
    if len(jj) == 0:
        jj, ii = np.nonzero(body2d)
    x_sp, y_sp, _ = cv.phys(0, jj.mean(), ii.mean())
    y_sp_front = float(cv.phys(0, jj.min(), 0)[1])  # anterior edge of the vertebral body (smaller y)
    # domes of organs cut by the top slice: the cross-section shrinks like a spherical cap
    caps = {5: rng.uniform(35, 65), 1: rng.uniform(20, 50), 6: rng.uniform(30, 70), 20: rng.uniform(10, 30)}
    cap_h = {}
    hmap = np.zeros(top_lab.shape, np.float32)
    for oid, H in caps.items():
        m = top_lab == oid
        if m.sum() < 4:
            continue
        d = ndimage.distance_transform_edt(m) * s
        D = max(float(d.max()), s)
        h = np.where(m, H * np.sqrt(np.clip(1.0 - (1.0 - d / D) ** 2, 0, 1)), 0.0).astype(np.float32)
        cap_h[oid] = h
        hmap = np.maximum(hmap, h)
    hmap = ndimage.gaussian_filter(hmap, 4.0 / s) * cavity2d
    # the diaphragm slopes down from the domes instead of running flat at the template's top
    hmap = np.maximum(hmap, 0.8 * ndimage.gaussian_filter(hmap, 15.0 / s)) * cavity2d
    dia = rng.uniform(4.0, 7.0)
    # slices above the top
    ks = np.arange(kt + 1, nz)
    h3 = ((ks - kt) * s).astype(np.float32)[:, None, None]
    lab = np.zeros((len(ks),) + top_lab.shape, np.uint8)
    ct = np.full((len(ks),) + top_lab.shape, -1000.0, np.float32)
    body3 = np.broadcast_to(body2d, lab.shape)
    ct[body3] = np.broadcast_to(top_ct, lab.shape)[body3]
    ct[body3 & (ct < -200)] = -100.0  # no gas in the chest wall
    # towards the lung apices the thorax narrows: a thicker wall (shoulder girdle) in the top 80 mm
    h_total = float(h3.max())
    taper = np.clip(h3 - (h_total - 80.0), 0.0, None) * rng.uniform(0.5, 0.9)
    cav3 = cavity2d[None] & (dskin[None] > wall + taper)
    ct[body3 & ~cav3 & (np.broadcast_to(dskin, lab.shape) > wall - 5.0)] = 50.0
    lab[cav3] = LUNG_ID
    ct[cav3] = -850.0
    lung_top = np.isin(top_lab, (10, 11, 12, 13, 14))  # lung bases continue upwards
    dia3 = cav3 & (h3 >= hmap[None]) & (h3 < hmap[None] + dia) & ~lung_top[None]
    lab[dia3] = DIAPHRAGM
    ct[dia3] = 45.0
    below_dome = cav3 & (h3 < hmap[None]) & ~lung_top[None]
    lab[below_dome] = 0
    ct[below_dome] = -90.0  # fat between the capped organs
    for oid, h in cap_h.items():
        m = (h3 < h[None]) & cav3
        lab[m] = oid
        ct[m] = 50.0
    spine3 = np.broadcast_to(spine2d, lab.shape)
    lab[spine3] = np.broadcast_to(top_lab, lab.shape)[spine3]
    # intervertebral discs every ~30 mm
    period, phase = rng.uniform(27, 34), rng.uniform(0, 30)
    disc = (np.mod(h3 + phase, period) < 6.0) & np.broadcast_to(np.isin(top_lab, VERTEBRA_IDS), lab.shape)
    lab[disc] = 117
    # ribs: slanted bands in the wall around the cavity (not at the front midline: cartilage there)
    y2 = cv.phys(0, np.arange(top_lab.shape[0]), 0)[1][:, None]
    x2 = cv.phys(0, 0, np.arange(top_lab.shape[1]))[0][None, :]
    ring = body2d & (dskin > wall - 10.0) & (dskin < wall - 3.0)
    y_front = float(y2[np.nonzero(body2d.any(axis=1))[0].min(), 0])
    slant = (45.0 * (1.0 - (y2 - y_front) / max(y_sp - y_front, 1.0))).astype(np.float32)
    rib_period, rib_phase, rib_w = rng.uniform(30, 40), rng.uniform(0, 40), rng.uniform(7, 10)
    band = np.mod(h3 + slant[None] + rib_phase, rib_period) < rib_w
    front = np.broadcast_to((np.abs(x2 - x_sp) < 25.0) & (y2 < y_sp - 60.0), ring.shape)
    ribs = band & np.broadcast_to(ring, lab.shape)
    lab[ribs & ~front[None]] = 100
    lab[ribs & front[None]] = 117
    cv.labels[kt + 1:] = lab
    cv.ct[kt + 1:] = ct
    z_top = cv.z_top
    out = {"z_template_top": z_top, "z_liver_dome": z_top + float(caps[5]) if 5 in cap_h else z_top,
           "wall_mm": wall}

    # ---- heart: sits on the diaphragm, left-anterior of the spine
    y_ant = y_front + wall
    hx = x_sp + rng.uniform(15, 40)
    hy = y_ant + rng.uniform(0.38, 0.5) * (y_sp_front - y_ant)
    a, b, c = rng.uniform(62, 80), rng.uniform(46, 58), rng.uniform(44, 55)
    e1 = _unit([rng.uniform(0.5, 0.75), -rng.uniform(0.4, 0.65), -rng.uniform(0.3, 0.55)])  # base -> apex
    e2 = _unit(np.array([-1.0, -1.0, 0.0]) - (np.array([-1.0, -1.0, 0.0]) @ e1) * e1)  # anterior-right
    e3 = np.cross(e1, e2)
    R = np.stack([e1, e2, e3])
    semi = np.array([a, b, c])
    ext_z = float(np.sqrt(((R.T * semi[None, :]) ** 2).sum(axis=1))[2])
    # the heart rests on the diaphragm: its floor is the dome's height under its footprint
    foot = ((x2 - hx) ** 2 + (y2 - hy) ** 2) < (0.8 * b) ** 2
    floor = z_top + float(np.percentile(hmap[foot], 35) if foot.any() else 0.0) + dia
    hc = np.array([hx, hy, floor + ext_z * rng.uniform(0.75, 0.9)])
    out["heart_centre"] = hc.tolist()
    out["z_heart_top"] = float(hc[2] + ext_z)
    soft = (LUNG_ID, 0, MEDIASTINAL_FAT)  # the heart replaces only these: it rests on the diaphragm and domes
    # mediastinal / epicardial fat envelope, then the heart wall and the blood pools
    paint_ellipsoid(cv, hc, semi + rng.uniform(3, 8), R, MEDIASTINAL_FAT, where=soft, ct_value=-90.0)
    paint_ellipsoid(cv, hc, semi, R, MYOCARDIUM, where=soft, ct_value=45.0)
    base = hc - e1 * a * 0.62
    la_c = base - e2 * b * 0.25 + np.array([0, 1, 0]) * 12 + np.array([0, 0, 1]) * 10
    ra_c = base + e2 * b * 0.55 + np.array([-1, 0, 0]) * 8
    for cc, ss, v in ((la_c, [0.32 * a, 0.42 * b, 0.45 * c], LA), (ra_c, [0.36 * a, 0.36 * b, 0.45 * c], RA)):
        paint_ellipsoid(cv, cc, np.array(ss) + 3.0, R, MYOCARDIUM, where=soft, ct_value=45.0)
        paint_ellipsoid(cv, cc, ss, R, v, where=soft + (MYOCARDIUM,), ct_value=45.0)
    paint_ellipsoid(cv, hc + e1 * a * 0.12 - e2 * b * 0.22, [0.62 * a, 0.45 * b, 0.55 * c], R, LV,
                    where=(MYOCARDIUM,), ct_value=45.0)
    paint_ellipsoid(cv, hc + e2 * b * 0.52 - e1 * a * 0.05, [0.55 * a, 0.28 * b, 0.6 * c], R, RV,
                    where=(MYOCARDIUM, MEDIASTINAL_FAT), ct_value=45.0)

    # ---- aorta: descending from the template's aorta, arch, ascending into the heart base
    top_aorta = np.argwhere(cv.labels[kt] == 52)
    if len(top_aorta):
        ax, ay, _ = cv.phys(0, top_aorta[:, 0].mean(), top_aorta[:, 1].mean())
        r_d = max(math.sqrt(len(top_aorta) * s * s / math.pi), 8.0)
    else:
        ax, ay, r_d = x_sp + 15, y_sp_front - 12, 11.0
    z_arch = out["z_heart_top"] + rng.uniform(10, 30)
    root = base + e1 * 8 + e2 * 5
    r_a = r_d * rng.uniform(1.15, 1.45)
    asc_top = np.array([root[0] - rng.uniform(5, 15), root[1] - rng.uniform(0, 10), z_arch - 10])
    desc_top = np.array([ax + rng.uniform(-3, 6), ay, z_arch - 5])
    arch = [asc_top]
    for t in np.linspace(0.2, 0.8, 4):
        p = (1 - t) * asc_top + t * desc_top
        p[2] = z_arch + 22 * math.sin(math.pi * t)
        arch.append(p)
    arch.append(desc_top)
    path = [root] + arch + [np.array([ax, ay, z_top - s])]
    radii = [r_a] + [r_a * (1 - 0.3 * t) for t in np.linspace(0, 1, len(arch) - 1)] + [r_d]
    fat_kw = dict(where=soft, ct_value=-90.0)
    for p, q, r in zip(path[:-1], path[1:], radii):
        paint_tube(cv, p, q, r + rng.uniform(3, 6), MEDIASTINAL_FAT, **fat_kw)
    vessel_where = soft + (MYOCARDIUM,)
    for p, q, r in zip(path[:-1], path[1:], radii):
        paint_tube(cv, p, q, r, 52, where=vessel_where + (52,), ct_value=45.0)
    out["z_arch"] = float(z_arch + 22)
    # great vessels from the arch to the top of the canvas
    z_end = float(cv.phys(nz - 1, 0, 0)[2]) + s
    for t, dx, r, v in ((0.25, -rng.uniform(10, 25), rng.uniform(5, 7), 54), (0.45, rng.uniform(0, 8), rng.uniform(3.5, 5), 58),
                        (0.65, rng.uniform(10, 25), rng.uniform(4, 6), 56)):
        i0 = int(round(t * (len(arch) - 1)))
        p0 = arch[i0]
        paint_tube(cv, p0, p0 + np.array([dx, 5.0, z_end - p0[2]]), r, v, where=vessel_where + (52,), ct_value=45.0)
    # superior vena cava into the right atrium; inferior vena cava from the template into it
    svc_x = asc_top[0] - rng.uniform(18, 28)
    paint_tube(cv, [svc_x, asc_top[1] + 8, z_end], [svc_x, asc_top[1] + 8, ra_c[2]], rng.uniform(8, 11), 62,
               where=vessel_where + (MEDIASTINAL_FAT,), ct_value=45.0)
    top_ivc = np.argwhere(cv.labels[kt] == 63)
    if len(top_ivc):
        vx, vy, _ = cv.phys(0, top_ivc[:, 0].mean(), top_ivc[:, 1].mean())
        r_v = max(math.sqrt(len(top_ivc) * s * s / math.pi), 8.0)
        paint_tube(cv, [vx, vy, z_top - s], [ra_c[0], ra_c[1], ra_c[2] - 10], r_v, 63,
                   where=vessel_where + (5, DIAPHRAGM, MEDIASTINAL_FAT, RA), ct_value=45.0)
    # pulmonary trunk from the right ventricle up and left under the arch, then to both hila
    pt0 = hc + e2 * b * 0.6 - e1 * a * 0.35
    bif = np.array([hc[0] + rng.uniform(0, 15), (hc[1] + y_sp_front) / 2, out["z_heart_top"] + rng.uniform(-5, 10)])
    r_pa = rng.uniform(11, 15)
    paint_tube(cv, pt0, bif, r_pa, PULM_ARTERY, where=vessel_where, ct_value=45.0)
    hila = {}
    for side in (-1, 1):
        hil = np.array([x_sp + side * rng.uniform(55, 75), y_sp_front - rng.uniform(5, 20), bif[2] - rng.uniform(0, 15)])
        hila[side] = hil
        paint_tube(cv, bif, hil, r_pa * 0.7, PULM_ARTERY, where=vessel_where, ct_value=45.0)
        paint_tube(cv, la_c, hil - np.array([0, 0, 20]), rng.uniform(5, 7), PULM_VEIN, where=vessel_where, ct_value=45.0)
    # trachea, main bronchi, oesophagus
    tr = np.array([x_sp + rng.uniform(-5, 5), y_sp_front - rng.uniform(25, 35)])
    carina = np.array([tr[0], tr[1], bif[2] + 10])
    for p, q, r in (([tr[0], tr[1], z_end], carina, 9.0), (carina, hila[-1] + [0, 5, 15], 6.0), (carina, hila[1] + [0, 5, 15], 6.0)):
        paint_tube(cv, p, q, r + 2.0, 16, where=vessel_where, ct_value=45.0)
        paint_tube(cv, p, q, r, AIRWAY_AIR, where=(16,), ct_value=-1000.0)
    oe = np.array([x_sp + rng.uniform(5, 15), y_sp_front - rng.uniform(6, 12)])
    paint_tube(cv, [oe[0], oe[1], z_top - s], [oe[0] - 5, oe[1] - 3, z_end], rng.uniform(6, 9), 15,
               where=vessel_where + (DIAPHRAGM, 0), ct_value=40.0)
    # pulmonary vessels: branching trees from the hila into the lungs
    for side, hil in hila.items():
        for tree in range(4):
            value = PULM_ARTERY if tree % 2 == 0 else PULM_VEIN
            _lung_tree(cv, rng, hil + rng.normal(0, 8, 3), side, value, 3)
    return out


def _lung_tree(cv: Canvas, rng, start, side, value, levels, r=5.0):
    d0 = _unit([side * 1.0, rng.normal(0, 0.5), rng.normal(0, 0.6)])
    tips = [(np.asarray(start, float), d0, r)]
    for _ in range(levels):
        nxt = []
        for p, d, rr in tips:
            for _b in range(3):
                dd = _unit(d + rng.normal(0, 0.7, 3))
                q = p + dd * rng.uniform(20, 40)
                paint_tube(cv, p, q, rr, value, where=(LUNG_ID, value), ct_value=45.0)
                nxt.append((q, dd, max(rr * 0.65, 1.2)))
        tips = nxt


# ---------------------------------------------------------------------------- liver vessels
def draw_liver_vessels(cv: Canvas, rng: np.random.Generator) -> dict:
    """Intrahepatic portal veins (from the hilum) and hepatic veins (into the IVC) as branching
    tubes drawn only over liver voxels (they stay liver in the label)."""
    liver = cv.labels == 5
    if liver.sum() < 1000:
        return {}
    idx = np.argwhere(liver)
    sub = idx[rng.choice(len(idx), size=min(len(idx), 20000), replace=False)]
    pts = np.stack(cv.phys(sub[:, 0], sub[:, 1], sub[:, 2]), axis=1)  # (x, y, z)
    centre = pts.mean(axis=0)
    # portal root: the portal vein's voxels closest to the liver centre
    pv = np.argwhere(cv.labels == 64)
    if len(pv):
        pvp = np.stack(cv.phys(pv[:, 0], pv[:, 1], pv[:, 2]), axis=1)
        root = pvp[np.argsort(np.linalg.norm(pvp - centre, axis=1))[:20]].mean(axis=0)
    else:
        root = centre + np.array([20.0, 20.0, -30.0])
    ivc = np.argwhere(cv.labels == 63)
    if len(ivc):
        ivp = np.stack(cv.phys(ivc[:, 0], ivc[:, 1], ivc[:, 2]), axis=1)
        near = ivp[np.abs(ivp[:, 2] - (pts[:, 2].max() - 25)) < 6]
        hv_root = near.mean(axis=0) if len(near) else ivp[np.argmax(ivp[:, 2])]
    else:
        hv_root = np.array([centre[0] + 30, centre[1] + 40, pts[:, 2].max() - 25])

    def tree(p0, targets_fn, radii, value):
        tips = [p0]
        n_seg = 0
        for level, (r, n_br, frac) in enumerate(radii):
            nxt = []
            for p in tips:
                for t in targets_fn(p, level, n_br):
                    q = p + (t - p) * frac
                    mid = (p + q) / 2 + rng.normal(0, 0.08 * np.linalg.norm(q - p), 3)
                    rr = r * rng.uniform(0.8, 1.2)
                    paint_tube(cv, p, mid, rr, value, where=(5,))
                    paint_tube(cv, mid, q, rr * 0.9, value, where=(5,))
                    n_seg += 2
                    nxt.append(q)
            tips = nxt
        return n_seg

    def near_targets(p, level, n):
        reach = (120.0, 70.0, 45.0, 30.0)[min(level, 3)]
        d = np.linalg.norm(pts - p, axis=1)
        cand = pts[(d > reach * 0.3) & (d < reach)]
        if len(cand) == 0:
            cand = pts
        return cand[rng.choice(len(cand), size=n)]

    def portal_targets(p, level, n):
        if level == 0:  # right and left portal veins
            right = pts[pts[:, 0] < root[0]]
            left = pts[pts[:, 0] >= root[0]]
            return [c.mean(axis=0) for c in (right, left) if len(c)]
        return near_targets(p, level, n)

    n_pv = tree(root, portal_targets, [(rng.uniform(5.5, 7.5), 2, 0.6), (3.8, 3, 0.75), (2.4, 3, 0.8), (1.6, 2, 0.85)], PORTAL_IN)

    def hepatic_targets(p, level, n):
        if level == 0:  # right, middle and left hepatic veins fan out anteriorly and down
            out = []
            for dx in (-90.0, -20.0, 50.0):
                goal = np.array([hv_root[0] + dx, hv_root[1] - 70.0, hv_root[2] - 40.0])
                out.append(pts[np.argmin(np.linalg.norm(pts - goal, axis=1))])
            return out
        return near_targets(p, level, n)

    n_hv = tree(hv_root, hepatic_targets, [(rng.uniform(4.5, 6.5), 3, 0.85), (3.0, 3, 0.8), (1.9, 2, 0.85)], HEPATIC_IN)
    return {"portal_segments": n_pv, "hepatic_segments": n_hv}
