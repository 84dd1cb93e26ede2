"""Image grid geometry: the size/spacing/origin/direction of a volume, without its voxels.

Physical space is ITK's (and DICOM's) LPS: +x towards the patient's Left, +y Posterior,
+z Superior. SimpleITK reads every format into LPS (NIfTI's RAS is converted on reading),
so a direction matrix here is always LPS. Arrays are in SimpleITK order (z, y, x).

The network works on a *canonical* grid: identity direction in LPS (array rows run
anterior->posterior, columns patient right->left, slices inferior->superior), so every
input orientation (flipped, permuted, oblique, RAS-stored NIfTI) looks the same to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

# A direction counts as "axis aligned" when it is a signed permutation within this tolerance.
AXIS_ALIGNED_TOL = 1e-5


@dataclass(frozen=True)
class Geometry:
    """The grid of a 3D image: ``size``/``spacing``/``origin`` in (x, y, z), ``direction``
    row-major 3x3 (SimpleITK's ``GetDirection()`` order, columns = index axes in LPS)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_image(cls, image: sitk.Image) -> "Geometry":
        if image.GetDimension() != 3:
            raise ValueError(f"a 3D image is needed, got {image.GetDimension()}D")
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(
            size=tuple(int(v) for v in d["size"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    # ------------------------------------------------------------------ matrices
    @property
    def matrix(self) -> np.ndarray:
        """3x3 direction matrix (columns: index axes i, j, k as LPS unit vectors)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """3x3 matrix A with physical = origin + A @ (i, j, k)."""
        return self.matrix * np.asarray(self.spacing, dtype=float)[None, :]

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous voxel-index to LPS matrix (slicerio's ``ijkToLPS``)."""
        m = np.eye(4)
        m[:3, :3] = self.index_to_physical_matrix
        m[:3, 3] = self.origin
        return m

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size))

    def index_to_physical(self, ijk) -> np.ndarray:
        """(N, 3) continuous indices (i, j, k) -> (N, 3) LPS points."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.index_to_physical_matrix.T + np.asarray(self.origin)

    def physical_to_index(self, points) -> np.ndarray:
        """(N, 3) LPS points -> (N, 3) continuous indices (i, j, k)."""
        pts = np.atleast_2d(np.asarray(points, dtype=float)) - np.asarray(self.origin)
        return np.linalg.solve(self.index_to_physical_matrix, pts.T).T

    def corners(self) -> np.ndarray:
        """(8, 3) LPS corners of the volume covered by the voxels (voxel *edges*, not centres)."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.size, dtype=float) - 0.5
        idx = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        return self.index_to_physical(idx)

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) LPS corners of the axis-aligned box around the volume's voxel edges."""
        c = self.corners()
        return c.min(axis=0), c.max(axis=0)

    def centre(self) -> np.ndarray:
        """LPS centre of the volume."""
        return self.index_to_physical((np.asarray(self.size, dtype=float) - 1.0) / 2.0)[0]

    # ------------------------------------------------------------------ images
    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry's spacing/origin/direction on ``image`` (same size) and return it."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image size {image.GetSize()} does not match the geometry {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image with this geometry from a (z, y, x) array (copied)."""
        array = np.asarray(array)
        if array.shape != self.shape_zyx:
            raise ValueError(f"array shape {array.shape} does not match the grid (z, y, x) {self.shape_zyx}")
        return self.apply_to(sitk.GetImageFromArray(array))

    def resample(self, image: sitk.Image, interpolator=sitk.sitkLinear, default_value: float = 0.0,
                 pixel_type=None) -> sitk.Image:
        """Resample ``image`` onto this grid (identity transform, physical space)."""
        if pixel_type is None:
            pixel_type = image.GetPixelID()
        return sitk.Resample(image, list(self.size), sitk.Transform(), interpolator, self.origin, self.spacing,
                             self.direction, float(default_value), pixel_type)

def geometry_of(obj) -> Geometry:
    """Geometry of a Geometry, an sitk.Image, or anything with a ``.grid`` image / ``.source``."""
    if isinstance(obj, Geometry):
        return obj
    if isinstance(obj, sitk.Image):
        return Geometry.from_image(obj)
    grid = getattr(obj, "grid", None)
    if isinstance(grid, sitk.Image):
        return Geometry.from_image(grid)
    raise TypeError(f"cannot take a grid geometry from {type(obj).__name__}")


def orientation_code(direction: Sequence[float]) -> str:
    """ITK-style code of where each index axis points (LPS physical space): "LPS" = identity."""
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    out = []
    for col in range(3):
        v = m[:, col]
        ax = int(np.argmax(np.abs(v)))
        out.append(letters[ax][1 if v[ax] > 0 else 0])
    return "".join(out)


def check_direction(direction: Sequence[float], tol: float = 1e-3) -> np.ndarray:
    """The 3x3 direction as an array; ValueError unless orthonormal (rotation or reflection)."""
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(m)) or not np.allclose(m.T @ m, np.eye(3), atol=tol):
        raise ValueError(f"direction matrix is not orthonormal: {np.round(m, 4).tolist()}")
    return m


def axis_permutation(direction: Sequence[float], tol: float = AXIS_ALIGNED_TOL) -> Optional[tuple[tuple[int, ...], tuple[int, ...]]]:
    """If ``direction`` is a signed permutation (within ``tol``) return ``(axis, sign)``:
    index axis m points along physical axis ``axis[m]`` with ``sign[m]`` (+1/-1). None if oblique."""
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    axis, sign = [], []
    for col in range(3):
        v = m[:, col]
        ax = int(np.argmax(np.abs(v)))
        if abs(abs(v[ax]) - 1.0) > tol or np.any(np.abs(np.delete(v, ax)) > tol):
            return None
        axis.append(ax)
        sign.append(1 if v[ax] > 0 else -1)
    if sorted(axis) != [0, 1, 2]:
        return None
    return tuple(axis), tuple(sign)


def physical_axis_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """Input spacing along the physical L, P, S axes: for each, the spacing of the index axis
    most aligned with it (exact for axis-aligned grids, nearest axis for oblique ones)."""
    m = np.abs(geometry.matrix)
    out = []
    for p in range(3):
        out.append(float(geometry.spacing[int(np.argmax(m[p, :]))]))
    return tuple(out)  # type: ignore[return-value]


def canonical_grid(geometry: Geometry, spacing: Sequence[float]) -> Geometry:
    """Identity-direction (LPS) grid with ``spacing`` (x, y, z) covering ``geometry``'s extent.

    The grid covers the axis-aligned physical box around the input's voxel edges, with
    ``ceil(extent / spacing)`` voxels per axis (at least 1), centred on that box. For an
    axis-aligned input whose extent is a multiple of the spacing (e.g. 512 x 0.8 mm -> 256 x
    1.6 mm) the voxel edges of both grids coincide.
    """
    lo, hi = geometry.bounding_box()
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (3,) or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"target spacing must be three positive numbers, got {spacing.tolist()}")
    extent = hi - lo
    size = np.maximum(1, np.ceil(np.round(extent / spacing, 6))).astype(int)
    centre = (lo + hi) / 2.0
    origin = centre - (size - 1) / 2.0 * spacing
    return Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def reorient_to_lps_identity(array_zyx: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Exact (no interpolation) re-ordering of an axis-aligned volume to identity direction.

    Returns a view/copy of ``array_zyx`` with axes permuted and flipped so that index axes
    i, j, k run along +L, +P, +S, and its Geometry. ValueError for an oblique direction.
    """
    perm = axis_permutation(geometry.direction)
    if perm is None:
        raise ValueError("direction is oblique; it cannot be re-ordered exactly")
    axis, sign = perm
    # index axis m (0=i, 1=j, 2=k) is array axis 2 - m in (z, y, x) order
    new_size, new_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    src_axis_for_phys = [0, 0, 0]
    for m in range(3):
        p = axis[m]
        src_axis_for_phys[p] = m
        new_size[p] = geometry.size[m]
        new_spacing[p] = geometry.spacing[m]
    # physical index of the new origin voxel: for flipped axes take the last index
    start = [0.0, 0.0, 0.0]
    for m in range(3):
        if sign[m] < 0:
            start[m] = geometry.size[m] - 1
    new_origin = geometry.index_to_physical(start)[0]
    # array transposition: new array axes (z, y, x) = physical (S, P, L) = p = 2, 1, 0
    transpose = [2 - src_axis_for_phys[p] for p in (2, 1, 0)]
    out = np.transpose(array_zyx, transpose)
    flips = tuple(2 - p for p in range(3) if sign[src_axis_for_phys[p]] < 0)
    if flips:
        out = np.flip(out, axis=flips)
    geo = Geometry(
        size=tuple(new_size),
        spacing=tuple(new_spacing),
        origin=tuple(float(v) for v in new_origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return out, geo

