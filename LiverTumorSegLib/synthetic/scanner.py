"""Scanner simulation shared by the synthetic generators: acquisition grids, texture noise."""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-variance low-frequency noise field (texture, gas pockets, lobulation)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field_ / (field_.std() + 1e-6)


def output_grid_over(template, rng: np.random.Generator, inplane: float, thickness: float,
                 max_inplane_voxels: int) -> sitk.Image:
    """A random acquisition grid over (part of) the template's field of view, in a random orientation."""
    ct = template.ct
    size = np.array(ct.GetSize(), dtype=float)
    spacing = np.array(ct.GetSpacing())
    extent = size * spacing
    frac = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0), rng.uniform(0.6, 1.0)])
    new_extent = extent * frac
    start_frac = rng.uniform(0, 1, 3) * (1 - frac)
    out_spacing = np.array([inplane, inplane, thickness])
    out_size = np.maximum(np.round(new_extent / out_spacing).astype(int), [16, 16, 3])
    if out_size[:2].max() > max_inplane_voxels:
        out_spacing[:2] *= out_size[:2].max() / max_inplane_voxels
        out_size = np.maximum(np.round(new_extent / out_spacing).astype(int), [16, 16, 3])
    # Orientation: axis flips (RAS-like vs LPS) and, sometimes, a small oblique tilt.
    flips = np.where(rng.uniform(size=3) < 0.3, -1.0, 1.0)
    direction = np.diag(flips)
    if rng.uniform() < 0.25:
        t = math.radians(rng.uniform(-10, 10))
        direction = direction @ np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    # Place the grid so that its centre is the centre of the chosen sub-box of the template.
    src_dir = np.array(ct.GetDirection()).reshape(3, 3)
    centre_index = (start_frac + frac / 2) * size - 0.5
    centre = np.array(ct.GetOrigin()) + src_dir @ (centre_index * spacing)
    origin = centre - direction @ ((out_size - 1) / 2.0 * out_spacing)
    grid = sitk.Image([int(s) for s in out_size], sitk.sitkUInt8)
    grid.SetSpacing(out_spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid




def dense_transform(transform: sitk.Transform, reference: sitk.Image, spacing_mm: float = 6.0) -> sitk.Transform:
    """``transform`` sampled on a coarse grid (``spacing_mm``) covering ``reference``, as a
    displacement-field transform (linear interpolation). For smooth warps (affine + B-spline)
    the difference is well under a voxel, and resampling gets several times faster, since a
    B-spline is no longer evaluated at every voxel."""
    d = np.array(reference.GetDirection()).reshape(3, 3)
    sp = np.full(3, float(spacing_mm))
    n = np.ceil(np.array(reference.GetSize()) * np.array(reference.GetSpacing()) / sp).astype(int) + 3
    origin = np.array(reference.GetOrigin()) - d @ sp
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, [int(v) for v in n],
                                              origin.tolist(), sp.tolist(), d.ravel().tolist())
    return sitk.DisplacementFieldTransform(field)
