"""Template-based synthetic CT: real anatomy, randomised acquisition, for real-scan transfer.

The procedural generator (``synthetic.procedural``) draws anatomy from simple shapes; a network trained
on it alone learns "a bright blob on the right" and fails on real scans, whose organs have real
shapes and neighbours. Here the anatomy comes from a real multi-label map (TotalSegmentator's
117 classes, liver = 5), deformed at random (affine + smooth B-spline), and intensities are drawn
per tissue from physical HU ranges for a random contrast phase (non-contrast, arterial, portal
venous), with tumours of many sizes and appearances inserted into the liver, and the scanner
simulated: in-plane blur, slice-thickness blur and partial volume, noise, field of view.

With probability ``real_texture_prob`` the template's own CT intensities are kept (a random HU
affine and a liver shift stand in for the phase) so the network also sees real texture.
A scan whose labels serve as a template must never be one the model is scored on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .scanner import dense_transform, output_grid_over as _output_grid, smooth_noise as _smooth_noise
from .tumours import insert_tumours_basic as _insert_tumours

# TotalSegmentator v2 "total" class ids grouped by tissue.
LIVER = (5,)
SPLEEN = (1,)
KIDNEY = (2, 3, 23, 24)
GALLBLADDER = (4,)
STOMACH_BOWEL = (6, 15, 18, 19, 20)
PANCREAS = (7,)
ADRENAL = (8, 9)
LUNG = (10, 11, 12, 13, 14, 16)
BLADDER = (21,)
BONE = tuple(range(25, 51)) + tuple(range(69, 79)) + (91,) + tuple(range(92, 117))
CARTILAGE = (117,)
HEART = (51, 61)
ARTERY = (52, 54, 55, 56, 57, 58, 65, 66)
VEIN = (53, 59, 60, 62, 63, 67, 68)
PORTAL = (64,)
MUSCLE = tuple(range(80, 90)) + (22, 17)
CORD_BRAIN = (79, 90)

PHASES = ("non_contrast", "arterial", "portal_venous")

# Mean HU ranges (low, high) per tissue and phase; a case draws one mean per tissue.
HU_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "liver": {"non_contrast": (45, 70), "arterial": (60, 90), "portal_venous": (90, 135)},
    "spleen": {"non_contrast": (40, 55), "arterial": (90, 160), "portal_venous": (100, 140)},
    "kidney": {"non_contrast": (25, 40), "arterial": (140, 220), "portal_venous": (140, 200)},
    "pancreas": {"non_contrast": (35, 50), "arterial": (90, 140), "portal_venous": (80, 110)},
    "adrenal": {"non_contrast": (20, 40), "arterial": (50, 90), "portal_venous": (50, 80)},
    "gallbladder": {p: (0, 25) for p in PHASES},
    "bowel_wall": {"non_contrast": (30, 45), "arterial": (60, 100), "portal_venous": (70, 110)},
    "artery": {"non_contrast": (35, 50), "arterial": (220, 400), "portal_venous": (130, 200)},
    "vein": {"non_contrast": (35, 50), "arterial": (60, 140), "portal_venous": (130, 190)},
    "portal": {"non_contrast": (35, 50), "arterial": (80, 150), "portal_venous": (150, 220)},
    "heart": {"non_contrast": (35, 50), "arterial": (180, 350), "portal_venous": (120, 180)},
    "muscle": {"non_contrast": (40, 60), "arterial": (45, 70), "portal_venous": (50, 75)},
    "fat": {p: (-120, -80) for p in PHASES},
    "lung": {p: (-880, -780) for p in PHASES},
    "bone": {p: (180, 380) for p in PHASES},
    "cortex": {p: (600, 1100) for p in PHASES},
    "cartilage": {p: (80, 180) for p in PHASES},
    "cord": {p: (25, 45) for p in PHASES},
    "bladder": {p: (0, 20) for p in PHASES},
}

GROUPS: dict[str, tuple[int, ...]] = {
    "liver": LIVER, "spleen": SPLEEN, "kidney": KIDNEY, "gallbladder": GALLBLADDER,
    "bowel_wall": STOMACH_BOWEL, "pancreas": PANCREAS, "adrenal": ADRENAL, "lung": LUNG,
    "bladder": BLADDER, "bone": BONE, "cartilage": CARTILAGE, "heart": HEART, "artery": ARTERY,
    "vein": VEIN, "portal": PORTAL, "muscle": MUSCLE, "cord": CORD_BRAIN,
}

BUNDLED_TEMPLATES = Path(__file__).resolve().parent.parent / "resources" / "templates"


@dataclass
class Template:
    """A real CT and its multi-label map (TotalSegmentator classes), both in HU / class ids."""

    ct: sitk.Image
    labels: sitk.Image
    name: str = ""

    @classmethod
    def bundled(cls, name: str = "totalseg_example_ct_sm") -> "Template":
        """A template shipped with the package (resources/templates/NAME)."""
        folder = BUNDLED_TEMPLATES / name
        return cls.load(folder / "ct.nii.gz", folder / "totalseg_multilabel.nii.gz")

    @classmethod
    def load(cls, ct_path: str | Path, labels_path: str | Path) -> "Template":
        ct = sitk.Cast(sitk.ReadImage(str(ct_path)), sitk.sitkFloat32)
        labels = sitk.Cast(sitk.ReadImage(str(labels_path)), sitk.sitkUInt8)
        labels = sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return cls(ct, labels, Path(labels_path).parent.name)


@dataclass
class TemplateCase:
    image: sitk.Image  # float32 HU
    label: sitk.Image  # uint8: 0 background, 1 liver, 2 tumour
    tumours: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _random_transform(template: Template, rng: np.random.Generator, elastic_mm: float) -> sitk.Transform:
    """Affine (scale, small rotation, shift) about the template centre, then a smooth B-spline warp."""
    size = np.array(template.ct.GetSize())
    centre = template.ct.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist())
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    scale = rng.uniform(0.85, 1.18, size=3)
    ax, ay, az = (math.radians(a) for a in rng.uniform([-6, -6, -12], [6, 6, 12]))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(1.0 / scale)  # maps output points to template points
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation(rng.uniform(-12, 12, size=3).tolist())
    composite = sitk.CompositeTransform(3)
    if elastic_mm > 0:
        mesh = [4, 4, 3]
        bspline = sitk.BSplineTransformInitializer(template.ct, mesh, order=3)
        params = np.asarray(bspline.GetParameters())
        bspline.SetParameters((rng.normal(0, elastic_mm / 2.0, size=params.shape)).tolist())
        composite.AddTransform(bspline)
    composite.AddTransform(affine)
    return composite


def make_template_case(template: Template, seed: int, phase: Optional[str] = None,
                       n_tumours: tuple[int, int] = (0, 5), real_texture_prob: float = 0.3,
                       inplane_mm: Optional[float] = None, thickness_mm: Optional[float] = None,
                       max_inplane_voxels: int = 320, fast_warp: bool = False) -> TemplateCase:
    """One randomised synthetic case from a template; deterministic for a seed.

    ``fast_warp``: evaluate the random deformation on a coarse grid and interpolate it
    (``scanner.dense_transform``): ~3x faster, sub-voxel different from the exact warp."""
    rng = np.random.default_rng(seed)
    phase = phase or PHASES[rng.integers(len(PHASES))]
    inplane = inplane_mm or float(rng.uniform(0.7, 1.6))
    thickness = thickness_mm or float(rng.choice([0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0]))
    transform = _random_transform(template, rng, elastic_mm=float(rng.uniform(0, 10)))
    out_grid = _output_grid(template, rng, inplane, thickness, max_inplane_voxels)

    # Synthesise on a grid with thin slices, then simulate the slice thickness (partial volume).
    step = max(1, int(math.ceil(thickness / 1.0 - 1e-6)))  # thin sub-slices per acquired slice
    fine_z = thickness / step
    fine_size = list(out_grid.GetSize())
    fine_size[2] = fine_size[2] * step
    fine = sitk.Image(fine_size, sitk.sitkUInt8)
    fine.SetSpacing((out_grid.GetSpacing()[0], out_grid.GetSpacing()[1], fine_z))
    fine.SetDirection(out_grid.GetDirection())
    d = np.array(out_grid.GetDirection()).reshape(3, 3)
    fine.SetOrigin((np.array(out_grid.GetOrigin()) - d[:, 2] * (thickness - fine_z) / 2.0).tolist())

    if fast_warp:
        transform = dense_transform(transform, fine)
    labels = sitk.GetArrayFromImage(sitk.Resample(template.labels, fine, transform, sitk.sitkLabelGaussian, 0))
    ct = sitk.GetArrayFromImage(sitk.Resample(template.ct, fine, transform, sitk.sitkLinear, -1024.0))
    spacing_zyx = np.array(fine.GetSpacing()[::-1])
    liver = np.isin(labels, LIVER)

    means = {t: float(rng.uniform(*HU_RANGES[t][phase])) for t in HU_RANGES}
    use_real = rng.uniform() < real_texture_prob
    if use_real:
        img = ct * rng.uniform(0.92, 1.08) + rng.uniform(-15, 15)
        img[liver] += means["liver"] - float(np.median(ct[liver])) if liver.any() else 0.0
    else:
        body = ndimage.binary_fill_holes(ct > -500) | (labels > 0)
        img = np.full(labels.shape, -1000.0, np.float32)
        img[body] = np.where(ct[body] < -40, means["fat"], means["muscle"])
        texture = _smooth_noise(labels.shape, rng, 2.0)
        for tissue, ids in GROUPS.items():
            mask = np.isin(labels, ids)
            if not mask.any():
                continue
            base = means[tissue]
            if tissue == "bone":
                inner = ndimage.binary_erosion(mask, iterations=1)
                img[mask] = means["cortex"]
                img[inner] = base + 60 * texture[inner]
                continue
            if tissue == "lung":
                img[mask] = base + 40 * texture[mask]
                continue
            if tissue == "bowel_wall":
                inner = ndimage.binary_erosion(mask, iterations=2)
                img[mask] = base
                gas = _smooth_noise(labels.shape, rng, 3.0) > rng.uniform(0.3, 1.5)
                content = np.where(gas, -950.0, rng.uniform(5, 40))
                img[inner] = content[inner]
                continue
            amp = {"liver": 6, "spleen": 8 if phase != "arterial" else 25, "kidney": 15}.get(tissue, 5)
            img[mask] = base + amp * texture[mask]

    tumour, tumour_info = _insert_tumours(img, liver, spacing_zyx, means["liver"], phase, rng,
                                          int(rng.integers(n_tumours[0], n_tumours[1] + 1)))

    # Scanner: in-plane PSF blur, slice profile in z, then sampling at the slice thickness, noise.
    psf = float(rng.uniform(0.3, 0.8))
    sigma = (thickness / 2.355 / fine_z, psf / fine.GetSpacing()[1], psf / fine.GetSpacing()[0])
    img = ndimage.gaussian_filter(img.astype(np.float32), sigma)
    img = img[step // 2::step][: out_grid.GetSize()[2]]
    liver_f = ndimage.uniform_filter1d(liver.astype(np.float32), step, axis=0)[step // 2::step][: out_grid.GetSize()[2]]
    tum_f = ndimage.uniform_filter1d(tumour.astype(np.float32), step, axis=0)[step // 2::step][: out_grid.GetSize()[2]]
    noise = float(rng.uniform(6, 25))
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    img = np.clip(img, -1024, 3071).astype(np.float32)

    label = np.zeros(img.shape, np.uint8)
    label[liver_f >= 0.5] = 1
    label[(tum_f >= 0.5) & (label == 1)] = 2

    image_out = sitk.GetImageFromArray(img)
    image_out.CopyInformation(out_grid)
    label_out = sitk.GetImageFromArray(label)
    label_out.CopyInformation(out_grid)
    info = {"template": template.name, "phase": phase, "real_texture": bool(use_real), "seed": seed,
            "spacing": list(out_grid.GetSpacing()), "noise_hu": noise}
    return TemplateCase(image_out, label_out, tumour_info, info)
