"""Whole-field-of-view synthetic CT: a real template's anatomy (lung bases to pelvis) with a
procedural chest above it, in every contrast phase, with the hard negatives of real CT.

What a case holds (each drawn from the seed):
- anatomy: the template's TotalSegmentator labels (``totalseg_example_ct_full``), completed
  above its top slice by ``anatomy.draw_chest`` (liver dome, heart with chambers and
  myocardium, aorta, arch and great vessels, pulmonary vessels, lungs, trachea, ribs) and
  ``anatomy.draw_liver_vessels`` (portal and hepatic veins inside the liver); a random affine
  and smooth B-spline deformation;
- intensities per phase (``non_contrast``, ``arterial``, ``portal_venous``, ``cta``) and tissue;
  hard negatives: colon with stool and gas, small bowel collapsed / fluid / positive-contrast /
  at liver-like density, duodenum, gallbladder, kidneys, IVC; the template's real CT is kept for
  unlabelled body tissue (fat, muscle, vessels, table);
- the liver: normal, fatty (low HU) or cirrhotic (shrunken, nodular surface, ascites);
  intrahepatic vessels per phase (label liver, never tumour);
- lesions (``tumours.insert_lesions``, after Hu et al. CVPR 2023);
- a field of view: whole, chest+abdomen, abdomen, abdomen+pelvis, or without liver (chest,
  pelvis: empty label);
- a scanner: in-plane 0.6-1.0 mm (matrix <= 512), slices 1-5 mm (thickness = spacing, slab
  profile), axis flips and small oblique tilts, blur, correlated noise.

The case is synthesised on a work grid that shares the output grid's origin and direction
(in-plane spacing chosen for a voxel budget, thin sub-slices), then slab-averaged and
resampled in-plane onto the output grid; the labels take the same path (fractions >= 0.5).
Labels: 0 background, 1 liver (parenchyma and its vessels), 2 tumour (always inside 1's region).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from . import anatomy as A
from .scanner import dense_transform, smooth_noise
from .templates import BUNDLED_TEMPLATES, TemplateCase
from .tumours import draw_regime, insert_lesions, lesion_diameters

PHASES = ("non_contrast", "arterial", "portal_venous", "cta")
FOV_KINDS = ("whole", "chest_abdomen", "abdomen", "abdomen_pelvis", "chest", "pelvis")
NO_LIVER_FOVS = ("chest", "pelvis")
LIVER_CONDITIONS = ("normal", "fatty", "cirrhotic")
DEFAULT_TEMPLATE = "totalseg_example_ct_full"
CANVAS_MM = 1.5
CHEST_MM = 270.0
SMOOTH_LABELS = "labels_1p5mm.nii.gz"

# mean HU ranges per tissue and phase (a case draws one mean per tissue)
_P = PHASES


def _ph(nc, art, pv, cta):
    return dict(zip(_P, (nc, art, pv, cta)))


HU = {
    "liver": _ph((50, 68), (62, 90), (95, 135), (62, 88)),
    "spleen": _ph((40, 55), (90, 150), (100, 140), (100, 170)),
    "kidney": _ph((25, 40), (140, 220), (140, 200), (150, 250)),
    "pancreas": _ph((35, 50), (90, 140), (80, 110), (90, 140)),
    "adrenal": _ph((20, 40), (50, 90), (50, 80), (50, 90)),
    "gallbladder": _ph((0, 25), (0, 25), (0, 25), (0, 25)),
    "bowel_wall": _ph((30, 45), (60, 100), (70, 110), (60, 100)),
    "artery": _ph((35, 50), (220, 400), (130, 200), (280, 500)),
    "left_heart": _ph((35, 50), (200, 380), (120, 190), (250, 500)),
    "right_heart": _ph((35, 50), (130, 330), (120, 190), (160, 450)),
    "myocardium": _ph((35, 50), (90, 150), (90, 130), (100, 160)),
    "svc": _ph((35, 50), (150, 500), (120, 180), (150, 600)),
    "ivc": _ph((35, 50), (60, 130), (120, 180), (50, 110)),
    "portal": _ph((32, 45), (80, 150), (150, 220), (90, 160)),
    "hepatic_vein": _ph((30, 45), (50, 90), (130, 200), (50, 95)),
    "vein": _ph((35, 50), (60, 140), (130, 190), (60, 140)),
    "muscle": _ph((40, 60), (45, 70), (50, 75), (45, 70)),
    "fat": _ph((-120, -80), (-120, -80), (-120, -80), (-120, -80)),
    "lung": _ph((-880, -780), (-880, -780), (-880, -780), (-880, -780)),
    "bone": _ph((180, 380), (180, 380), (180, 380), (180, 380)),
    "cortex": _ph((600, 1100), (600, 1100), (600, 1100), (600, 1100)),
    "cartilage": _ph((80, 180), (80, 180), (80, 180), (80, 180)),
    "cord": _ph((25, 45), (25, 45), (25, 45), (25, 45)),
    "bladder": _ph((0, 20), (0, 20), (0, 20), (0, 20)),
    "ascites": _ph((0, 20), (0, 20), (5, 25), (0, 20)),
    "air": _ph((-1000, -980), (-1000, -980), (-1000, -980), (-1000, -980)),
}
# TotalSegmentator ids (and anatomy.py's) grouped by intensity
GROUPS: dict[str, tuple[int, ...]] = {
    "liver": (5,), "portal": (64, A.PORTAL_IN), "hepatic_vein": (A.HEPATIC_IN,), "spleen": (1,), "kidney": (2, 3, 23, 24),
    "gallbladder": (4,), "pancreas": (7,), "adrenal": (8, 9), "lung": (10, 11, 12, 13, 14),
    "bladder": (21,), "bone": tuple(range(25, 51)) + tuple(range(69, 79)) + (91,) + tuple(range(92, 117)),
    "cartilage": (117,), "artery": (52, 54, 55, 56, 57, 58, 65, 66), "left_heart": (A.LV, A.LA, A.PULM_VEIN),
    "right_heart": (A.RV, A.RA, A.PULM_ARTERY), "myocardium": (A.MYOCARDIUM,), "svc": (62,), "ivc": (63,),
    "vein": (53, 59, 60, 67, 68), "muscle": tuple(range(80, 90)) + (22, 17, A.DIAPHRAGM, 15, 16),
    "cord": (79, 90), "fat": (A.MEDIASTINAL_FAT,), "ascites": (A.ASCITES,), "air": (A.AIRWAY_AIR,),
}
MEASURED = {"liver": 5, "portal_vein_in_liver": A.PORTAL_IN, "hepatic_vein": A.HEPATIC_IN, "left_ventricle": A.LV,
            "right_ventricle": A.RV, "myocardium": A.MYOCARDIUM, "aorta": 52, "ivc": 63, "spleen": 1, "kidney_right": 2,
            "small_bowel": 18, "duodenum": 19, "colon": 20, "stomach": 6, "gallbladder": 4}
BOWEL = {"stomach": 6, "small_bowel": 18, "duodenum": 19, "colon": 20}
LIVER_LABEL_IDS = A.LIVER_IDS


# ---------------------------------------------------------------------------- canvas
def template_folder(template: Union[str, Path, None]) -> Path:
    if template is None:
        template = DEFAULT_TEMPLATE
    p = Path(template)
    if not p.is_dir():
        p = BUNDLED_TEMPLATES / str(template)
    if not (p / "ct.nii.gz").is_file() or not (p / "totalseg_multilabel.nii.gz").is_file():
        raise FileNotFoundError(f"template folder without ct.nii.gz and totalseg_multilabel.nii.gz: {p}")
    return p


def smooth_labels(folder: Path, spacing: float = CANVAS_MM) -> sitk.Image:
    """The template's labels on an LPS-aligned grid at ``spacing`` mm, label-Gaussian interpolated
    (shipped as ``labels_1p5mm.nii.gz``; computed, ~10 s, when absent)."""
    f = folder / SMOOTH_LABELS
    if f.is_file() and spacing == CANVAS_MM:
        return sitk.ReadImage(str(f), sitk.sitkUInt8)
    lab = sitk.ReadImage(str(folder / "totalseg_multilabel.nii.gz"), sitk.sitkUInt8)
    size = np.array(lab.GetSize())
    corners = np.array([lab.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                        for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = np.round((hi - lo) / spacing).astype(int)
    ref = sitk.Image([int(v) for v in n], sitk.sitkUInt8)
    ref.SetSpacing([spacing] * 3)
    ref.SetOrigin((lo + spacing / 2).tolist())
    return sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkLabelGaussian, 0)


@lru_cache(maxsize=2)
def _base_canvas(folder: str) -> A.Canvas:
    f = Path(folder)
    lab = smooth_labels(f)
    ct = sitk.Resample(sitk.ReadImage(str(f / "ct.nii.gz"), sitk.sitkFloat32), lab, sitk.Transform(), sitk.sitkLinear, -1024.0)
    la = sitk.GetArrayFromImage(lab)
    ca = sitk.GetArrayFromImage(ct)
    pad = int(round(CHEST_MM / CANVAS_MM))
    la = np.concatenate([la, np.zeros((pad,) + la.shape[1:], np.uint8)])
    ca = np.concatenate([ca, np.full((pad,) + ca.shape[1:], -1000.0, np.float32)])
    k_top = lab.GetSize()[2] - 2  # the last full slice of the template (the very last is partial)
    la[k_top + 1:] = 0
    ca[k_top + 1:] = -1000.0
    la.setflags(write=False)
    ca.setflags(write=False)
    return A.Canvas(la, ca, np.array(lab.GetOrigin()), CANVAS_MM, k_top)


# ---------------------------------------------------------------------------- geometry
def _affine(rng, centre) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(v) for v in centre])
    scale = rng.uniform([0.88, 0.88, 0.9], [1.12, 1.12, 1.1])
    ax, ay, az = (math.radians(a) for a in rng.uniform([-4, -4, -10], [4, 4, 10]))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    affine.SetMatrix((rz @ ry @ rx @ np.diag(1.0 / scale)).ravel().tolist())
    affine.SetTranslation(rng.uniform(-10, 10, size=3).tolist())
    return affine


def _choose_fov(rng, kind: str, marks: dict, z_lo: float, z_hi: float) -> tuple[float, float]:
    """z range (canvas mm) of a field-of-view kind."""
    liver_lo, dome = marks["z_liver_lo"], marks["z_liver_dome"]
    m = 5.0  # the liver's deformed edge is trimmed off after sampling (make_wholefov_case)
    if kind == "whole":
        a, b = z_lo + rng.uniform(0, 20), z_hi - rng.uniform(0, 20)
    elif kind == "chest_abdomen":
        a, b = liver_lo - rng.uniform(-10, 60), z_hi - rng.uniform(0, 40)
    elif kind == "abdomen":
        a, b = liver_lo - rng.uniform(10, 80), dome + rng.uniform(5, 50)
    elif kind == "abdomen_pelvis":
        a, b = z_lo + rng.uniform(0, 30), dome + rng.uniform(5, 50)
    elif kind == "chest":
        a, b = dome + m + rng.uniform(0, 20), z_hi - rng.uniform(0, 15)
    elif kind == "pelvis":
        a, b = z_lo + rng.uniform(0, 15), liver_lo - m - rng.uniform(0, 20)
    else:
        raise ValueError(f"unknown field-of-view kind {kind!r} (expected one of {', '.join(FOV_KINDS)})")
    a, b = max(a, z_lo), min(b, z_hi)
    if b - a < 40:
        b = a + 40
    return float(a), float(b)


# ---------------------------------------------------------------------------- tissues
def _paint(lab: np.ndarray, ct: np.ndarray, rng, phase: str, condition: str, spacing_xy: float) -> tuple[np.ndarray, dict]:
    """HU image from the label map (TotalSegmentator + anatomy ids) and the real CT."""
    means = {t: float(rng.uniform(*HU[t][phase])) for t in HU}
    base_liver = means["liver"]
    if condition == "fatty":
        means["liver"] = float(rng.uniform(*{"non_contrast": (-25, 40), "arterial": (15, 60),
                                               "portal_venous": (30, 85), "cta": (15, 60)}[phase]))
    lut_group = np.full(256, -1, np.int16)
    names = list(GROUPS)
    for gi, name in enumerate(names):
        lut_group[list(GROUPS[name])] = gi
    g = lut_group[lab]
    texture = smooth_noise(lab.shape, rng, 1.5)
    # unlabelled body: the template's real CT (fat, muscle, small vessels, table), phase-shifted
    soft = (ct > -30) & (ct < 150)
    img = np.where(soft, ct + (means["muscle"] - 50.0), ct).astype(np.float32)
    img[ct < -990] = -1000.0
    amp = {"liver": 6.0, "spleen": 8.0 if phase not in ("arterial", "cta") else 25.0, "kidney": 12.0, "lung": 35.0,
           "left_heart": 10.0, "right_heart": 25.0 if phase in ("arterial", "cta") else 10.0, "svc": 40.0}
    for gi, name in enumerate(names):
        m = g == gi
        if not m.any():
            continue
        base = means[name]
        if name == "bone":
            inner = ndimage.binary_erosion(m, iterations=1)
            img[m] = means["cortex"]
            img[inner] = base + 60 * texture[inner]
            continue
        img[m] = base + amp.get(name, 5.0) * texture[m]
        if name == "kidney" and phase != "non_contrast":
            # corticomedullary phase: the medulla enhances later than the cortex
            bb = ndimage.find_objects(m.astype(np.uint8))[0]
            inner = ndimage.binary_erosion(m[bb], iterations=max(1, int(round(5.0 / spacing_xy))))
            drop = rng.uniform(60, 130) if phase in ("arterial", "cta") else rng.uniform(5, 25)
            img[bb][inner] -= drop
    info = {"means": means, "base_liver_hu": base_liver}
    return img, info


def _bowel(img, lab, rng, phase, means, spacing_zyx, y_of) -> dict:
    """Bowel contents by segment: stool and gas in the colon, collapsed / fluid / positive
    contrast / liver-like small bowel, fluid and gas in the stomach and duodenum."""
    wall_vox = max(1, int(round(2.5 / float(np.mean(spacing_zyx[1:])))))
    chosen = {}
    for name, oid in BOWEL.items():
        m = lab == oid
        if m.sum() < 50:
            continue
        img[m] = means["bowel_wall"] + 6 * rng.standard_normal(int(m.sum())).astype(np.float32)
        bb = ndimage.find_objects(m.astype(np.uint8))[0]
        inner = ndimage.binary_erosion(m[bb], iterations=wall_vox)
        idx = np.argwhere(inner)
        if len(idx) == 0:
            continue
        off = np.array([b.start for b in bb])
        n_seg = int(np.clip(len(idx) * np.prod(spacing_zyx) / 40000.0, 2, 40))
        seeds = idx[rng.choice(len(idx), size=n_seg, replace=False)] * spacing_zyx
        _, seg = cKDTree(seeds).query(idx * spacing_zyx, k=1)
        noise = smooth_noise(inner.shape, rng, 1.2)
        kinds = []
        for si in range(n_seg):
            sel = idx[seg == si]
            if len(sel) == 0:
                continue
            t = tuple((sel + off).T)
            if name == "colon":
                kind = str(rng.choice(["stool", "gas", "fluid_gas"], p=[0.65, 0.2, 0.15]))
            elif name == "small_bowel":
                kind = str(rng.choice(["collapsed", "fluid", "positive", "liver_like"], p=[0.35, 0.25, 0.15, 0.25]))
            elif name == "stomach":
                kind = str(rng.choice(["fluid_gas", "food", "positive"], p=[0.5, 0.35, 0.15]))
            else:
                kind = str(rng.choice(["collapsed", "fluid_gas", "liver_like"], p=[0.4, 0.35, 0.25]))
            kinds.append(kind)
            nz = noise[tuple(sel.T)]
            if kind == "stool":
                v = rng.uniform(-30, 60) + 45 * nz
                v = np.where(nz > rng.uniform(0.8, 1.6), -900.0 + 40 * nz, v)
            elif kind == "gas":
                v = -950.0 + 20 * nz
            elif kind == "fluid_gas":
                y = y_of(sel + off)  # physical y: gas rises anteriorly (small y) in a supine patient
                level = np.percentile(y, rng.uniform(10, 60))
                v = np.where(y < level, -950.0, rng.uniform(0, 25)) + 5 * nz
            elif kind == "collapsed":
                v = means["bowel_wall"] + rng.uniform(-5, 15) + 8 * nz
            elif kind == "fluid":
                v = rng.uniform(0, 25) + 5 * nz
            elif kind == "positive":
                v = rng.uniform(150, 400) + 30 * nz
            elif kind == "food":
                v = rng.uniform(10, 60) + 25 * nz
                v = np.where(nz > 1.3, -900.0, v)
            else:  # liver-like: the hard negative
                v = means["liver"] + rng.uniform(-15, 15) + 7 * nz
            img[t] = v
        chosen[name] = kinds
    return chosen


def _cirrhosis(lab: np.ndarray, rng, spacing_zyx) -> dict:
    """Shrink the liver with a nodular surface; the lost rim becomes ascites or fat."""
    liver = np.isin(lab, LIVER_LABEL_IDS)
    if liver.sum() < 500:
        return {}
    bb = ndimage.find_objects(liver.astype(np.uint8))[0]
    sub = liver[bb]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing_zyx)
    e0 = rng.uniform(3, 10)
    nod = smooth_noise(sub.shape, rng, max(1.0, 3.0 / float(np.mean(spacing_zyx))))
    cut = sub & (depth < e0 * (1.0 + 0.6 * nod))
    ascites = rng.uniform() < 0.5
    lab[bb][cut] = A.ASCITES if ascites else 0
    return {"rim_mm": float(e0), "ascites": bool(ascites), "removed_voxels": int(cut.sum())}


# ---------------------------------------------------------------------------- case
def make_wholefov_case(seed: int, template: Union[str, Path, None] = None, phase: Optional[str] = None,
                       fov: Optional[str] = None, condition: Optional[str] = None,
                       regime: Optional[str] = None, inplane_mm: Optional[float] = None,
                       thickness_mm: Optional[float] = None, max_matrix: int = 512,
                       max_output_voxels: int = 32_000_000, work_voxels: int = 14_000_000,
                       fov_probs: Optional[dict] = None, regime_probs: Optional[dict] = None,
                       direction: Optional[Sequence[float]] = None) -> TemplateCase:
    """One whole-field-of-view case; deterministic for (seed, arguments).

    ``direction``: row-major 3x3 of the output grid (None = drawn: axis flips, sometimes an
    oblique tilt). ``max_matrix``: in-plane matrix cap (small values give quick test cases).
    ``phase``/``fov``/``condition``/``regime`` None = drawn (see PHASES, FOV_KINDS,
    LIVER_CONDITIONS, tumours.REGIMES). ``fov_probs``/``regime_probs``: weights of the draws.
    The returned ``info`` holds the draws, the geometry and ``tumours`` (one dict per lesion in
    the output: ``centre_lps_mm``, ``diameter_mm`` (equivalent, from its voxels),
    ``n_voxels``, ``volume_ml``, ``kind``, ``surface``).
    """
    rng = np.random.default_rng([int(seed), 9])
    folder = template_folder(template)
    base = _base_canvas(str(folder))
    cv = A.Canvas(base.labels.copy(), base.ct.copy(), base.origin, base.spacing, base.k_top)
    phase = phase or str(rng.choice(PHASES, p=[0.2, 0.2, 0.4, 0.2]))
    if fov is None:
        probs = fov_probs or {"whole": 0.25, "chest_abdomen": 0.2, "abdomen": 0.25, "abdomen_pelvis": 0.2,
                              "chest": 0.05, "pelvis": 0.05}
        keys = list(probs)
        p = np.array([probs[k] for k in keys], float)
        fov = keys[int(rng.choice(len(keys), p=p / p.sum()))]
    if fov not in FOV_KINDS:
        raise ValueError(f"unknown field-of-view kind {fov!r} (expected one of {', '.join(FOV_KINDS)})")
    condition = condition or str(rng.choice(LIVER_CONDITIONS, p=[0.65, 0.2, 0.15]))
    regime = regime or draw_regime(rng, regime_probs)
    if fov in NO_LIVER_FOVS:
        regime = "none"

    marks = A.draw_chest(cv, rng)
    A.draw_liver_vessels(cv, rng)
    liver_z = np.nonzero(np.isin(cv.labels, LIVER_LABEL_IDS).any(axis=(1, 2)))[0]
    marks["z_liver_lo"] = float(cv.phys(liver_z.min(), 0, 0)[2])
    marks["z_liver_dome"] = float(cv.phys(liver_z.max(), 0, 0)[2])
    nz_c, ny_c, nx_c = cv.labels.shape
    z_lo = float(cv.origin[2])
    z_hi = float(cv.phys(nz_c - 1, 0, 0)[2])
    za, zb = _choose_fov(rng, fov, marks, z_lo, z_hi)

    # canvas images and the random deformation (output physical -> canvas physical)
    lab_img = sitk.GetImageFromArray(cv.labels)
    ct_img = sitk.GetImageFromArray(cv.ct)
    for im in (lab_img, ct_img):
        im.SetSpacing([cv.spacing] * 3)
        im.SetOrigin(cv.origin.tolist())
    body_ji = np.argwhere(cv.ct[cv.k_top // 2] > -500)
    bx0, by0, _ = cv.phys(0, body_ji[:, 0].min(), body_ji[:, 1].min())
    bx1, by1, _ = cv.phys(0, body_ji[:, 0].max(), body_ji[:, 1].max())
    centre = np.array([(bx0 + bx1) / 2, (by0 + by1) / 2, (za + zb) / 2])
    affine = _affine(rng, centre)
    transform = sitk.CompositeTransform(3)
    elastic = float(rng.uniform(0, 10))
    if elastic > 0:
        bs = sitk.BSplineTransformInitializer(lab_img, [4, 4, 6], order=3)
        bs.SetParameters(rng.normal(0, elastic / 2.0, size=len(bs.GetParameters())).tolist())
        transform.AddTransform(bs)
    transform.AddTransform(affine)

    # output grid: square matrix over the body, random orientation
    inplane = float(inplane_mm or rng.uniform(0.6, 1.0))
    side = max(bx1 - bx0, by1 - by0) + rng.uniform(10, 50)
    n_xy = int(math.ceil(side / inplane))
    if n_xy > max_matrix:
        n_xy = max_matrix
        inplane = side / n_xy
    length = zb - za
    choices = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0]
    if thickness_mm:
        thickness = float(thickness_mm)
    else:
        thickness = float(rng.choice(choices, p=[0.15, 0.1, 0.15, 0.2, 0.15, 0.15, 0.1]))
        # over the voxel cap: coarser in-plane (up to 1.0 mm) first, then thicker slices
        if n_xy * n_xy * (length / thickness) > max_output_voxels and not inplane_mm:
            n_fit = int(math.sqrt(max_output_voxels * thickness / length))
            n_xy = min(n_xy, max(n_fit, int(math.ceil(side / 1.0))))
            inplane = side / n_xy
        while n_xy * n_xy * (length / thickness) > max_output_voxels and thickness < choices[-1]:
            thickness = next(c for c in choices if c > thickness)
    n_z = max(4, int(round(length / thickness)))
    flips = np.where(rng.uniform(size=3) < 0.3, -1.0, 1.0)
    tilt = math.radians(rng.uniform(-8, 8)) if rng.uniform() < 0.2 else 0.0
    if direction is None:
        direction = np.diag(flips) @ np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    else:
        from ..geometry import check_direction

        direction = np.asarray(check_direction(np.asarray(direction, float).ravel()), float).reshape(3, 3)
    # the output box is centred on the affine's image of the chosen canvas box
    inv = affine.GetInverse()
    out_centre = np.array(inv.TransformPoint(centre.tolist()))
    out_size = np.array([n_xy, n_xy, n_z])
    out_spacing = np.array([inplane, inplane, thickness])
    origin = out_centre - direction @ ((out_size - 1) / 2.0 * out_spacing)

    # work grid: same origin/direction, coarser in-plane if needed, thin sub-slices
    step = max(1, int(math.ceil(thickness / 2.5 - 1e-6)))
    sub_z = thickness / step
    nzw = n_z * step
    ext = (n_xy - 1) * inplane
    ws = max(inplane, math.sqrt(ext * ext * nzw / work_voxels))
    nw = int(math.ceil(ext / ws)) + 1
    work = sitk.Image([nw, nw, nzw], sitk.sitkUInt8)
    work.SetSpacing([ws, ws, sub_z])
    work.SetDirection(direction.ravel().tolist())
    work.SetOrigin((origin - direction[:, 2] * (thickness - sub_z) / 2.0).tolist())
    # The B-spline is smooth: evaluate the whole transform on a coarse grid (~6 mm) once and
    # let a displacement-field transform interpolate it (evaluating the B-spline per voxel is slow).
    dense = dense_transform(transform, work)
    lab = sitk.GetArrayFromImage(sitk.Resample(lab_img, work, dense, sitk.sitkNearestNeighbor, 0))
    ct = sitk.GetArrayFromImage(sitk.Resample(ct_img, work, dense, sitk.sitkLinear, -1000.0))
    sp = np.array([sub_z, ws, ws])
    if fov in NO_LIVER_FOVS:
        # the deformation may bring the liver's edge into the box: keep the longest run of
        # acquired slices without liver (the label of a no-liver case is empty by construction)
        has = np.isin(lab, LIVER_LABEL_IDS).reshape(n_z, step, -1).any(axis=(1, 2))
        if has.any():
            best, start = (0, 0), None
            for k, h in enumerate(list(has) + [True]):
                if not h and start is None:
                    start = k
                elif h and start is not None:
                    if k - start > best[1] - best[0]:
                        best = (start, k)
                    start = None
            k0, k1 = best
            if k1 - k0 < 4:
                raise RuntimeError(f"seed {seed}: no liver-free {fov} field of view")
            lab, ct = lab[k0 * step:k1 * step], ct[k0 * step:k1 * step]
            origin = origin + direction[:, 2] * (k0 * thickness)
            n_z = k1 - k0
            nzw = n_z * step
            out_size = np.array([n_xy, n_xy, n_z])
            work = sitk.Image([nw, nw, nzw], sitk.sitkUInt8)
            work.SetSpacing([ws, ws, sub_z])
            work.SetDirection(direction.ravel().tolist())
            work.SetOrigin((origin - direction[:, 2] * (thickness - sub_z) / 2.0).tolist())

    cond_info = _cirrhosis(lab, rng, sp) if condition == "cirrhotic" else {}
    img, paint_info = _paint(lab, ct, rng, phase, condition, ws)
    means = paint_info["means"]
    if condition == "cirrhotic" and np.any(lab == 5):
        bb = ndimage.find_objects((lab == 5).astype(np.uint8))[0]
        liver_m = lab[bb] == 5
        img[bb][liver_m] += rng.uniform(6, 14) * smooth_noise(liver_m.shape, rng, max(1.0, 2.5 / ws))[liver_m]
    wdir, wsp, worg = np.array(work.GetDirection()).reshape(3, 3), np.array(work.GetSpacing()), np.array(work.GetOrigin())
    bowel_info = _bowel(img, lab, rng, phase, means, sp,
                        lambda zyx: worg[1] + (zyx[:, ::-1] * wsp) @ wdir[1])
    fat = (lab == 0) & (ct > -200) & (ct < -20)  # where a surface lesion may bulge: perihepatic fat
    del ct

    # lesions
    liver = np.isin(lab, LIVER_LABEL_IDS)
    diam = lesion_diameters(rng, regime) if liver.any() else []
    lesion_ids = np.zeros(lab.shape, np.uint8)
    lesions: list[dict] = []
    if diam:
        bb = ndimage.find_objects(liver.astype(np.uint8))[0]
        pad = [max(0, int(math.ceil(25.0 / s))) for s in sp]
        bb = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(bb, pad, lab.shape))
        sub_img = img[bb]
        vessels = np.isin(lab[bb], (A.PORTAL_IN, A.HEPATIC_IN, 64, 63))
        free = fat[bb]
        ids_sub, lesions = insert_lesions(sub_img, liver[bb], vessels, free, sp, paint_info["base_liver_hu"], phase, rng, diam)
        img[bb] = sub_img
        lesion_ids[bb] = ids_sub
        off = np.array([b.start for b in bb], float)
        for les in lesions:
            les["centre_index_zyx"] = [float(v) for v in np.asarray(les["centre_index_zyx"]) + off]

    # measured mean HU per structure (before the scanner's noise; lesions excluded)
    keep = lesion_ids.ravel() == 0
    lab_flat = lab.ravel()[keep]
    sums = np.bincount(lab_flat, weights=img.ravel()[keep], minlength=256)
    cnts = np.bincount(lab_flat, minlength=256)
    hu_measured = {name: round(float(sums[i] / cnts[i]), 1) for name, i in MEASURED.items() if cnts[i] > 20}
    del keep, lab_flat

    # scanner: slab profile, in-plane blur, correlated noise, onto the output grid
    psf = float(rng.uniform(0.3, 0.7))
    sig_xy = psf / ws
    img = ndimage.gaussian_filter(img, (0.0, sig_xy, sig_xy)) if sig_xy > 0.25 else img
    if step > 1:
        img = img.reshape(n_z, step, nw, nw).mean(axis=1)
        liver_f = liver.reshape(n_z, step, nw, nw).mean(axis=1, dtype=np.float32)
        tum_f = (lesion_ids > 0).reshape(n_z, step, nw, nw).mean(axis=1, dtype=np.float32)
        lesion_ids = lesion_ids[step // 2::step]
    else:
        img = ndimage.gaussian_filter1d(img, 0.35, axis=0)
        liver_f = liver.astype(np.float32)
        tum_f = (lesion_ids > 0).astype(np.float32)
    noise_hu = float(rng.uniform(6, 22)) if phase != "cta" else float(rng.uniform(10, 28))
    nrng = np.random.default_rng([int(seed), 10])
    n = nrng.standard_normal(img.shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0.0, 0.7, 0.7))
    img += n * np.float32(noise_hu / (n.std() + 1e-6))
    del n
    slab = sitk.Image([nw, nw, n_z], sitk.sitkFloat32)
    slab.SetSpacing([ws, ws, thickness])
    slab.SetDirection(direction.ravel().tolist())
    slab.SetOrigin(origin.tolist())
    out_ref = sitk.Image([int(v) for v in out_size], sitk.sitkUInt8)
    out_ref.SetSpacing(out_spacing.tolist())
    out_ref.SetDirection(direction.ravel().tolist())
    out_ref.SetOrigin(origin.tolist())

    def up(arr, interp, default=0.0):
        im = sitk.GetImageFromArray(arr)
        im.CopyInformation(slab)
        return sitk.GetArrayFromImage(sitk.Resample(im, out_ref, sitk.Transform(), interp, default))

    out = up(img.astype(np.float32), sitk.sitkLinear, -1000.0)
    if ws > inplane * 1.05:  # fine grain at the output resolution
        out += nrng.standard_normal(out.shape, dtype=np.float32) * np.float32(0.3 * noise_hu)
    np.round(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    label = np.zeros(out.shape, np.uint8)
    ids_o = np.zeros(out.shape, np.uint8)
    tum_o = np.zeros(out.shape, bool)
    if liver_f.any():
        # only the liver's box (in output indices) is resampled: the rest is background
        bb = ndimage.find_objects((liver_f > 0).astype(np.uint8))[0]
        r = ws / inplane
        lo = np.array([bb[0].start, int(math.floor(bb[1].start * r)) - 2, int(math.floor(bb[2].start * r)) - 2])
        hi = np.array([bb[0].stop, int(math.ceil((bb[1].stop - 1) * r)) + 3, int(math.ceil((bb[2].stop - 1) * r)) + 3])
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, out.shape)
        box_ref = sitk.Image([int(v) for v in (hi - lo)[::-1]], sitk.sitkUInt8)
        box_ref.SetSpacing(out_spacing.tolist())
        box_ref.SetDirection(direction.ravel().tolist())
        box_ref.SetOrigin(out_ref.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
        osl = tuple(slice(a, b) for a, b in zip(lo, hi))

        def up_box(arr, interp):
            im = sitk.GetImageFromArray(arr)
            im.CopyInformation(slab)
            return sitk.GetArrayFromImage(sitk.Resample(im, box_ref, sitk.Transform(), interp, 0.0))

        liver_o = up_box(liver_f, sitk.sitkLinear) >= 0.5
        tum_o[osl] = up_box(tum_f, sitk.sitkLinear) >= 0.5
        ids_o[osl] = up_box(lesion_ids, sitk.sitkNearestNeighbor)
        label[osl][liver_o] = 1
        label[tum_o] = 2
        # tumour voxels at a lesion's edge whose nearest work voxel was outside it: nearest lesion's id
        if tum_o.any():
            tb = ndimage.find_objects(tum_o.astype(np.uint8))[0]
            t_ids, t_m = ids_o[tb], tum_o[tb]
            for _ in range(4):
                miss = t_m & (t_ids == 0)
                if not miss.any():
                    break
                t_ids[miss] = ndimage.grey_dilation(t_ids, size=(3, 3, 3))[miss]
    image_out = sitk.GetImageFromArray(out)
    image_out.CopyInformation(out_ref)
    label_out = sitk.GetImageFromArray(label)
    label_out.CopyInformation(out_ref)

    # tumour records on the output grid
    vox_mm3 = float(np.prod(out_spacing))
    counts = np.bincount(ids_o[tum_o].ravel(), minlength=len(lesions) + 1)
    tumours = []
    work_geo = (np.array(work.GetOrigin()), np.array(work.GetDirection()).reshape(3, 3), np.array(work.GetSpacing()))
    for les in lesions:
        nvox = int(counts[les["id"]]) if les["id"] < len(counts) else 0
        if nvox == 0:
            continue
        ci = np.array(les["centre_index_zyx"])[::-1]
        centre_lps = work_geo[0] + work_geo[1] @ (ci * work_geo[2])
        vol = nvox * vox_mm3
        tumours.append({"id": les["id"], "kind": les["kind"], "surface": les["surface"],
                        "centre_lps_mm": [float(v) for v in centre_lps],
                        "diameter_mm": float((6.0 * vol / math.pi) ** (1.0 / 3.0)),
                        "drawn_diameter_mm": les["diameter_mm"], "n_voxels": nvox, "volume_ml": vol / 1000.0,
                        "hu": les["hu"]})
    info = {
        "source": "wholefov", "template": folder.name, "seed": int(seed), "phase": phase, "fov": fov,
        "liver_in_fov": bool(label.any()), "condition": condition, "tumour_regime": regime,
        "size": [int(v) for v in out_size], "spacing": [float(v) for v in out_spacing],
        "direction": [float(v) for v in direction.ravel()], "origin": [float(v) for v in origin],
        "work_spacing": [float(ws), float(ws), float(sub_z)], "noise_hu": noise_hu, "elastic_mm": elastic,
        "hu_means": {k: round(v, 1) for k, v in means.items()}, "hu_measured": hu_measured, "bowel": bowel_info, "cirrhosis": cond_info,
        "landmarks": {k: v for k, v in marks.items() if k.startswith("z_")}, "n_tumours": len(tumours),
        "tumours": tumours,
    }
    return TemplateCase(image_out, label_out, tumours, info)


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="whole-field-of-view template tools")
    p.add_argument("--rebuild-smooth-labels", metavar="FOLDER", help="write FOLDER/labels_1p5mm.nii.gz")
    a = p.parse_args(argv)
    if a.rebuild_smooth_labels:
        folder = Path(a.rebuild_smooth_labels)
        out = folder / SMOOTH_LABELS
        if out.exists():
            out.unlink()
        sitk.WriteImage(smooth_labels(folder), str(out), True)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
