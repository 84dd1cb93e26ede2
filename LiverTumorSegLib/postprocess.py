"""Post-processing of a predicted label map (numpy + scipy; every step can be switched off).

Labels: 0 background, 1 liver, 2 tumour; the *liver region* is labels >= 1 (parenchyma plus
tumour). Connected components use full (26-) connectivity in 3D. The steps, in this order:

1. ``largest_liver_component``: the liver region is reduced to its largest connected
   component; liver (label 1) voxels outside it become background. Tumour voxels outside it
   are left to step 2 (so that step 1 off/on and step 2 off/on are independent switches).
2. ``tumour_inside_liver``: tumour voxels outside the liver region become background. The
   liver region here is the component kept by step 1 when it is on; otherwise every connected
   component of labels >= 1 that contains liver parenchyma (tumour-only islands, which touch no
   liver voxel, are removed).
3. ``fill_holes``: cavities of the liver region fully enclosed in 3D are filled; the filled
   voxels (background before) become liver (1). Then, in every slice along each array axis,
   2D holes of at most ``max_hole_area_mm2`` are filled too: on thin volumes (a few slices) or
   iso-dense parenchyma the network leaves speckle holes that open through the top or bottom
   slice and so are not 3D cavities. The area cap keeps vessels such as the inferior vena
   cava (several cm^2 where the liver wraps around it) out of the liver.
4. ``min_tumour_volume_ml``: tumour components smaller than this volume (in mL, from the
   voxel spacing) become liver (1) when they touch the liver region, background otherwise.
   0 disables the step.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .utils.regions import bounding_box
from .options import PostprocessOptions  # noqa: F401 (declared there, re-exported)
from .utils.options import with_overrides

BACKGROUND, LIVER, TUMOUR = 0, 1, 2
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(mask, structure=_FULL)
    return lab, int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty mask -> empty)."""
    lab, n = _label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _small_holes_2d(mask: np.ndarray, spacing_zyx: Sequence[float], max_area_mm2: float) -> np.ndarray:
    """Background pixels in 2D holes of at most ``max_area_mm2``, in slices along every axis."""
    holes = np.zeros_like(mask)
    for axis in range(3):
        in_plane = [float(s) for i, s in enumerate(spacing_zyx) if i != axis]
        max_pixels = max_area_mm2 / (in_plane[0] * in_plane[1])
        for k in range(mask.shape[axis]):
            sl = np.take(mask, k, axis=axis)
            if not sl.any():
                continue
            cand = ndimage.binary_fill_holes(sl) & ~sl
            if not cand.any():
                continue
            lab, n = ndimage.label(cand)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            small = (sizes <= max_pixels)
            small[0] = False
            index = [slice(None)] * 3
            index[axis] = k
            holes[tuple(index)] |= small[lab]
    return holes


def postprocess_labels(
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    options: Optional[PostprocessOptions] = None,
    **overrides,
) -> tuple[np.ndarray, dict]:
    """Apply the switched-on steps to a (z, y, x) label array; returns (new labels, info).

    ``info`` counts what each step changed (voxels and components), for the report.
    The input array is not modified.
    """
    opts = options or PostprocessOptions()
    if overrides:
        opts = with_overrides(opts, **overrides)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label array, got shape {labels.shape}")
    out = np.asarray(labels).astype(np.uint8, copy=True)
    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    info: dict = {"options": opts.to_dict()}

    region: Optional[np.ndarray] = None  # the liver region after step 1/2, when computed
    if opts.largest_liver_component:
        fg = out >= LIVER
        keep = largest_component(fg)
        dropped_liver = (out == LIVER) & ~keep
        info["largest_liver_component"] = {"liver_voxels_removed": int(dropped_liver.sum())}
        out[dropped_liver] = BACKGROUND
        region = keep

    if opts.tumour_inside_liver:
        if region is None:
            lab, n = _label(out >= LIVER)
            with_liver = np.zeros(n + 1, dtype=bool)
            with_liver[np.unique(lab[out == LIVER])] = True
            with_liver[0] = False
            region = with_liver[lab]
        outside = (out == TUMOUR) & ~region
        info["tumour_inside_liver"] = {"tumour_voxels_removed": int(outside.sum())}
        out[outside] = BACKGROUND
        # A region made only of tumour has no liver: then there is no liver region at all.
        if not (out == LIVER).any():
            info["tumour_inside_liver"]["tumour_voxels_removed"] += int((out == TUMOUR).sum())
            out[out == TUMOUR] = BACKGROUND

    if opts.fill_holes:
        fg = out >= LIVER
        filled_n = 0
        box = bounding_box(fg, 1)
        if box is not None:
            sub = fg[box]
            filled = ndimage.binary_fill_holes(sub, structure=_FULL) & ~sub
            if opts.max_hole_area_mm2 > 0:
                filled |= _small_holes_2d(sub | filled, spacing_zyx, opts.max_hole_area_mm2)
            filled_n = int(filled.sum())
            if filled_n:
                out[box][filled] = LIVER
        info["fill_holes"] = {"voxels_filled": filled_n}

    if opts.min_tumour_volume_ml and opts.min_tumour_volume_ml > 0:
        tum = out == TUMOUR
        lab, n = _label(tum)
        removed = 0
        removed_voxels = 0
        if n:
            counts = np.bincount(lab.ravel())
            small = counts * voxel_ml < float(opts.min_tumour_volume_ml)
            small[0] = False
            if small.any():
                small_mask = small[lab]
                box = bounding_box(small_mask, 1)
                touching = np.zeros(n + 1, dtype=bool)
                near_liver = ndimage.binary_dilation(out[box] == LIVER, structure=_FULL)
                touching[np.unique(lab[box][near_liver & small_mask[box]])] = True
                touching[0] = False
                to_liver = small_mask & touching[lab]
                out[to_liver] = LIVER
                out[small_mask & ~to_liver] = BACKGROUND
                removed = int(small.sum())
                removed_voxels = int(small_mask.sum())
        info["min_tumour_volume"] = {"components_removed": removed, "voxels": removed_voxels}
    return out, info
