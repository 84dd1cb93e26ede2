"""The way back: network-grid probabilities -> input-grid probabilities and labels.

Kept apart from the sliding-window prediction (:mod:`..inference`), as nnU-Net keeps its
export step apart from its predictor: a later stage (e.g. a second, tumour-only network run on
a box around the liver) restores its output with the same functions.

Every function takes the grids as explicit :class:`~LiverTumorSegLib.geometry.Geometry`
objects: ``network`` (the canonical grid the probabilities live on; ``PreparedImage.network``)
and ``source`` (the input image's grid; ``PreparedImage.source``). Arrays are (z, y, x).

Probabilities travel back by linear interpolation and the argmax is taken on the input grid
(smooth boundaries at the input's resolution; nearest neighbour on labels would copy the
coarse network voxels as staircase blocks). Only the liver and tumour channels travel: the
softmax sums to one and interpolation is a convex combination, so background = 1 - p1 - p2.

A *box* is a sub-box of the network grid, given as a tuple of slices, as ``(start_zyx,
shape_zyx)`` in network voxels, or as its own Geometry. Probabilities predicted on a box are
restored onto the whole input grid with zeros (background) outside it; as in ITK, the box
covers its voxels' full extent (half a voxel beyond the outermost voxel centres).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError
from ..geometry import Geometry
from ..utils.regions import bounding_box

__all__ = [
    "Box",
    "sub_geometry",
    "box_geometry",
    "resample_probabilities",
    "resample_labels",
    "box_probabilities_to_input_region",
    "box_probabilities_to_input_grid",
    "argmax_labels",
    "labels_from_probabilities",
    "restore_labels",
]

#: A sub-box of the network grid: slices, (start_zyx, shape_zyx), or the box's own Geometry.
Box = Union[Geometry, Sequence[slice], Tuple[Sequence[int], Sequence[int]]]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sub_geometry(geo: Geometry, start_zyx: Sequence[int], shape_zyx: Sequence[int]) -> Geometry:
    """The Geometry of the sub-box of ``geo`` at ``start_zyx`` with ``shape_zyx`` (voxels, z, y, x)."""
    start_ijk = np.asarray(tuple(start_zyx)[::-1], dtype=float)
    origin = geo.index_to_physical(start_ijk)[0]
    return Geometry(size=tuple(int(v) for v in tuple(shape_zyx)[::-1]), spacing=geo.spacing,
                    origin=tuple(float(v) for v in origin), direction=geo.direction)


def box_geometry(network: Optional[Geometry], box: Box) -> Geometry:
    """The Geometry of ``box`` (see the module docstring); ``network`` unused for a Geometry box."""
    if isinstance(box, Geometry):
        return box
    if network is None:
        raise TypeError("a box given as slices or (start, shape) needs the network Geometry")
    box = tuple(box)
    if len(box) == 3 and all(isinstance(s, slice) for s in box):
        dims = network.shape_zyx
        start = [s.indices(n)[0] for s, n in zip(box, dims)]
        shape = [s.indices(n)[1] - a for s, n, a in zip(box, dims, start)]
    elif len(box) == 2:
        start, shape = [int(v) for v in box[0]], [int(v) for v in box[1]]
    else:
        raise TypeError("a box is 3 slices, (start_zyx, shape_zyx) or a Geometry")
    if len(start) != 3 or len(shape) != 3 or min(shape) < 1 or min(start) < 0 \
            or any(a + n > d for a, n, d in zip(start, shape, network.shape_zyx)):
        raise ValueError(f"box start {tuple(start)} shape {tuple(shape)} is not inside the network grid "
                         f"{network.shape_zyx}")
    return sub_geometry(network, start, shape)


def resample_probabilities(probs, network: Geometry, source: Geometry, default_value: float = 0.0) -> np.ndarray:
    """Probabilities (C, D, H, W) on ``network`` -> float32 (C, z, y, x) on ``source`` (linear).

    A (D, H, W) array is one channel and returns (z, y, x). Outside ``network``: ``default_value``.
    """
    p = _to_numpy(probs)
    squeeze = p.ndim == 3
    if squeeze:
        p = p[None]
    if p.ndim != 4 or tuple(p.shape[1:]) != network.shape_zyx:
        raise ValueError(f"probabilities must be (C, D, H, W) with (D, H, W) = {network.shape_zyx}, "
                         f"got {tuple(p.shape)}")
    out = np.empty((p.shape[0],) + source.shape_zyx, dtype=np.float32)
    for c in range(p.shape[0]):
        img = network.image_from_array(np.asarray(p[c], dtype=np.float32))
        res = source.resample(img, sitk.sitkLinear, default_value, sitk.sitkFloat32)
        out[c] = sitk.GetArrayViewFromImage(res)
    return out[0] if squeeze else out


def resample_labels(labels, network: Geometry, source: Geometry) -> np.ndarray:
    """Labels (D, H, W) (or (C, D, H, W)) on ``network`` -> uint8 on ``source``, nearest neighbour.

    Prefer :func:`resample_probabilities` when probabilities exist."""
    lab = _to_numpy(labels)
    if lab.ndim == 4:
        return np.stack([resample_labels(x, network, source) for x in lab])
    if tuple(lab.shape) != network.shape_zyx:
        raise ValueError(f"labels must be (D, H, W) = {network.shape_zyx}, got {tuple(lab.shape)}")
    img = network.image_from_array(lab.astype(np.uint8))
    res = source.resample(img, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res)


def _input_region(box_geo: Geometry, source: Geometry) -> Optional[Tuple[slice, ...]]:
    """Input-grid slices holding every input voxel whose centre can fall inside the box.

    The box's physical corners, one box voxel beyond its voxel centres on each side, are mapped
    to input indices and grown by one input voxel (more than the half voxel ITK interpolates
    beyond the outermost centres). None when the box misses the input grid.
    """
    lo = np.full(3, -1.0)
    hi = np.asarray(box_geo.size, dtype=float)
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    idx = source.physical_to_index(box_geo.index_to_physical(corners))
    i0 = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    i1 = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.asarray(source.size))
    if np.any(i1 <= i0):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(i0[::-1], i1[::-1]))


def box_probabilities_to_input_region(probs, box: Box, source: Geometry, network: Optional[Geometry] = None
                                      ) -> Optional[Tuple[Tuple[slice, ...], np.ndarray]]:
    """Probabilities (C, d, h, w) on a box -> (input slices, float32 (C, z', y', x') there).

    The compact form of :func:`box_probabilities_to_input_grid`: only the input voxels near the
    box are computed (everything outside the returned slices is 0). None if the box misses
    the input grid.
    """
    box_geo = box_geometry(network, box)
    p = _to_numpy(probs)
    if p.ndim not in (3, 4) or tuple(p.shape[-3:]) != box_geo.shape_zyx:
        raise ValueError(f"probabilities must be (C, d, h, w) with (d, h, w) = the box {box_geo.shape_zyx}, "
                         f"got {tuple(p.shape)}")
    region = _input_region(box_geo, source)
    if region is None:
        return None
    sub_src = sub_geometry(source, [s.start for s in region], [s.stop - s.start for s in region])
    return region, resample_probabilities(p, box_geo, sub_src, 0.0)


def box_probabilities_to_input_grid(probs, network: Optional[Geometry], box: Box, source: Geometry) -> np.ndarray:
    """Probabilities (C, d, h, w) predicted on a ``box`` of the ``network`` grid -> float32
    (C, z, y, x) on the whole ``source`` grid, 0 (background) outside the box.

    With the whole network grid as the box it equals :func:`resample_probabilities`. A
    (d, h, w) array is one channel and returns (z, y, x).
    """
    p = _to_numpy(probs)
    squeeze = p.ndim == 3
    if squeeze:
        p = p[None]
    out = np.zeros((p.shape[0],) + source.shape_zyx, dtype=np.float32)
    restored = box_probabilities_to_input_region(p, box, source, network)
    if restored is not None:
        region, values = restored
        out[(slice(None),) + region] = values
    return out[0] if squeeze else out


def argmax_labels(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """argmax over (1 - p1 - p2, p1, p2) without building the background channel (ties: lower label)."""
    p0 = 1.0 - p1 - p2
    lab = np.zeros(p1.shape, dtype=np.uint8)
    lab[(p1 > p0) & (p1 >= p2)] = 1
    lab[(p2 > p0) & (p2 > p1)] = 2
    return lab


def labels_from_probabilities(p_liver: np.ndarray, p_tumour: np.ndarray,
                              tumour_threshold: Optional[float] = None) -> np.ndarray:
    """Labels (uint8 0/1/2) from P(liver parenchyma) and P(tumour): THE thresholding rule.

    The liver region is where the argmax over (background, liver, tumour) is not background,
    i.e. max(P(liver), P(tumour)) > P(background) = 1 - P(liver) - P(tumour); it does not depend
    on the threshold. ``tumour_threshold`` None: the plain argmax (:func:`argmax_labels`,
    exactly). ``T`` in (0, 1): tumour (2) wherever P(tumour) >= T inside that region, liver (1)
    elsewhere in it. A higher T never gives more tumour voxels (the region is fixed and the
    tumour set shrinks). Used by the command line (``--tumour-threshold``) and by the Slicer
    module's tumour-sensitivity slider, which re-thresholds the kept probabilities.
    float16 inputs (kept probabilities) are computed in float32: exact values, and numpy's
    float16 arithmetic is about ten times slower.
    """
    if np.asarray(p_liver).dtype == np.float16:
        p_liver = np.asarray(p_liver, dtype=np.float32)
    if np.asarray(p_tumour).dtype == np.float16:
        p_tumour = np.asarray(p_tumour, dtype=np.float32)
    if tumour_threshold is None:
        return argmax_labels(p_liver, p_tumour)
    t = float(tumour_threshold)
    if not 0.0 < t < 1.0:
        raise ConfigError(f"tumour threshold must be between 0 and 1 (exclusive), got {tumour_threshold}")
    region = argmax_labels(p_liver, p_tumour) > 0
    lab = region.astype(np.uint8)
    lab[region & (p_tumour >= t)] = 2
    return lab


def restore_labels(p1: np.ndarray, p2: np.ndarray, network: Geometry, source: Geometry,
                   crop: bool = True, keep_probabilities: bool = False,
                   tumour_threshold: Optional[float] = None):
    """Liver/tumour probabilities on ``network`` -> argmax labels uint8 (z, y, x) on ``source``.

    With ``crop``, only the input voxels near the box of network voxels where background is
    not certain (p0 < 0.5, grown by 2 voxels) are interpolated: elsewhere every interpolated p0
    is >= 0.5 (linear interpolation is a convex combination), so the argmax there is
    background anyway. Gives exactly the labels of the full interpolation at a fraction of the
    cost.

    ``keep_probabilities`` returns ``(labels, (p_liver, p_tumour))``, both float16 (z, y, x) on
    the input grid, for the report's confidences and quality flags. With ``crop`` the box is then
    grown from the network voxels with liver-region probability > 0.3 (not 0.5): every input
    voxel whose interpolated value exceeds 0.3 lies in it and is exact; outside it is stored as 0
    (true value <= 0.3, so no uncertain voxel (0.3 < p < 0.7) is lost). float16: 2 bytes per
    voxel and channel (about 300 MB for a 512 x 512 x 300 CT), precise to about 0.001.

    ``tumour_threshold``: see :func:`labels_from_probabilities` (None: argmax). The crop stays
    exact with it, since the liver region is the argmax region either way.
    """
    if not crop:
        back = resample_probabilities(np.stack([p1, p2]), network, source)
        labels = labels_from_probabilities(back[0], back[1], tumour_threshold)
        if keep_probabilities:
            probs = back.astype(np.float16)
            return labels, (probs[0], probs[1])
        return labels
    out = np.zeros(source.shape_zyx, dtype=np.uint8)
    probs = np.zeros((2,) + tuple(source.shape_zyx), dtype=np.float16) if keep_probabilities else None
    box = bounding_box((p1 + p2) > (0.3 if keep_probabilities else 0.5), 2)
    restored = None
    if box is not None:
        restored = box_probabilities_to_input_region(np.stack([p1[box], p2[box]]), box, source, network)
    if restored is not None:
        region, back = restored
        out[region] = labels_from_probabilities(back[0], back[1], tumour_threshold)
        if probs is not None:
            probs[(slice(None),) + tuple(region)] = back
    return (out, (probs[0], probs[1])) if probs is not None else out
