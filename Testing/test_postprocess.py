"""Post-processing steps, each switched on alone, on hand-made label arrays."""
from __future__ import annotations

import numpy as np
import pytest

from LiverTumorSegLib.postprocess import PostprocessOptions, largest_component, postprocess_labels

OFF = dict(largest_liver_component=False, tumour_inside_liver=False, fill_holes=False, min_tumour_volume_ml=0.0)
SPACING = (2.0, 1.0, 1.0)  # z, y, x mm: one voxel = 2 uL


def only(**on) -> PostprocessOptions:
    return PostprocessOptions(**{**OFF, **on})


def base() -> np.ndarray:
    a = np.zeros((10, 20, 20), np.uint8)
    a[2:8, 2:12, 2:12] = 1  # big liver block, 600 voxels
    a[4:6, 5:8, 5:8] = 2  # tumour inside it, 18 voxels
    return a


def test_all_off_is_identity_and_input_untouched():
    a = base()
    a[0, 18, 18] = 1
    a[9, 0, 0] = 2
    before = a.copy()
    out, info = postprocess_labels(a, SPACING, only())
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(a, before)
    assert out.dtype == np.uint8


def test_largest_component_drops_small_liver_islands_only():
    a = base()
    a[0:2, 16:19, 16:19] = 1  # separate liver island (18 voxels)
    a[9, 18, 18] = 2  # isolated tumour voxel: left for the tumour-in-liver step
    out, info = postprocess_labels(a, SPACING, only(largest_liver_component=True))
    assert (out[0:2, 16:19, 16:19] == 0).all()
    assert out[9, 18, 18] == 2
    assert (out[2:8, 2:12, 2:12] >= 1).all() and (out == 2).sum() == 18 + 1
    assert info["largest_liver_component"]["liver_voxels_removed"] == 18


def test_largest_component_uses_26_connectivity():
    a = np.zeros((5, 5, 5), np.uint8)
    a[1, 1, 1] = 1
    a[2, 2, 2] = 1  # touches the first only at a corner
    a[4, 4, 0] = 1
    keep = largest_component(a >= 1)
    assert keep[1, 1, 1] and keep[2, 2, 2] and not keep[4, 4, 0]


def test_tumour_inside_liver_removes_tumour_outside_region():
    a = base()
    a[0:2, 16:19, 16:19] = 2  # tumour-only island, no liver around
    a[0:2, 0:2, 16:19] = 1  # a separate small liver island with a tumour attached
    a[0, 0, 18] = 2
    out, info = postprocess_labels(a, SPACING, only(tumour_inside_liver=True))
    assert (out[0:2, 16:19, 16:19] == 0).all()
    assert out[0, 0, 18] == 2  # its component has liver: kept (largest-component is off)
    assert (out[4:6, 5:8, 5:8] == 2).all()
    assert info["tumour_inside_liver"]["tumour_voxels_removed"] == 18


def test_tumour_inside_liver_with_largest_component_removes_tumour_in_other_islands():
    a = base()
    a[0:2, 0:2, 16:19] = 1
    a[0, 0, 18] = 2
    out, _ = postprocess_labels(a, SPACING, only(largest_liver_component=True, tumour_inside_liver=True))
    assert (out[0:2, 0:2, 16:19] == 0).all()
    assert (out == 2).sum() == 18


def test_fill_holes_fills_enclosed_cavity_as_liver():
    a = base()
    a[3:7, 8:11, 8:11] = 0  # enclosed cavity (36 voxels)
    a[2:8, 0:2, 5] = 0  # not a hole: outside
    out, info = postprocess_labels(a, SPACING, only(fill_holes=True))
    assert (out[3:7, 8:11, 8:11] == 1).all()
    assert info["fill_holes"]["voxels_filled"] == 36
    assert (out[4:6, 5:8, 5:8] == 2).all()  # tumour untouched
    # a notch open to the outside is no 3D cavity: it stays background without the 2D rule ...
    b = base()
    b[3:7, 8:11, 8:12] = 0
    out_b, _ = postprocess_labels(b, SPACING, only(fill_holes=True, max_hole_area_mm2=0))
    assert (out_b[3:7, 8:11, 8:12] == 0).all()
    # ... and with it, only if its cross-section is small: a tunnel of 4x3 voxels is filled,
    # a wide bay (open across the whole block) is not.
    out_t, _ = postprocess_labels(b, SPACING, only(fill_holes=True, max_hole_area_mm2=1e6))
    assert (out_t[3:7, 8:11, 8:12] == 1).all()
    c = base()
    c[2:8, 8:12, 8:12] = 0  # a corner cut: open on three faces, no slice encloses it
    out_c, _ = postprocess_labels(c, SPACING, only(fill_holes=True, max_hole_area_mm2=1e6))
    assert (out_c[2:8, 8:12, 8:12] == 0).all()


def test_min_tumour_volume_uses_spacing():
    a = base()  # tumour of 18 voxels * 2 uL = 0.036 mL
    a[6, 10, 10] = 2  # a 1-voxel tumour inside the liver (0.002 mL)
    out, info = postprocess_labels(a, SPACING, only(min_tumour_volume_ml=0.01))
    assert out[6, 10, 10] == 1  # removed tumour inside the liver becomes liver
    assert (out[4:6, 5:8, 5:8] == 2).all()
    assert info["min_tumour_volume"]["components_removed"] == 1
    # same threshold with 10x smaller voxels removes the big one too
    out2, info2 = postprocess_labels(a, (0.2, 1.0, 1.0), only(min_tumour_volume_ml=0.01))
    assert (out2 == 2).sum() == 0
    assert (out2[4:6, 5:8, 5:8] == 1).all()
    assert info2["min_tumour_volume"]["components_removed"] == 2


def test_small_tumour_outside_liver_becomes_background():
    a = base()
    a[0, 18, 18] = 2
    out, _ = postprocess_labels(a, SPACING, only(min_tumour_volume_ml=0.01))
    assert out[0, 18, 18] == 0


def test_empty_and_all_tumour_inputs():
    z = np.zeros((4, 4, 4), np.uint8)
    out, _ = postprocess_labels(z, SPACING)
    assert not out.any()
    t = np.full((4, 4, 4), 2, np.uint8)  # no liver at all: a tumour cannot be inside it
    out, _ = postprocess_labels(t, SPACING)
    assert not out.any()


def test_rejects_non_3d():
    with pytest.raises(ValueError):
        postprocess_labels(np.zeros((4, 4), np.uint8), (1, 1))


def test_small_2d_holes_through_a_thin_volume_are_filled_but_large_ones_are_not():
    """Three slices of liver with pin holes running through every slice (not 3D cavities)."""
    from LiverTumorSegLib.postprocess import PostprocessOptions, postprocess_labels

    labels = np.zeros((3, 60, 60), np.uint8)
    labels[:, 5:55, 5:55] = 1
    labels[:, 10:12, 10:12] = 0  # 2x2 px = 4 mm^2 at 1 mm: a speckle hole
    labels[:, 30:50, 30:50] = 0  # 20x20 mm = 400 mm^2: a vessel-sized hole, kept
    out, info = postprocess_labels(labels, (2.0, 1.0, 1.0), PostprocessOptions())
    assert (out[:, 10:12, 10:12] == 1).all()
    assert (out[:, 30:50, 30:50] == 0).all()
    assert info["fill_holes"]["voxels_filled"] == 3 * 4
    off, _ = postprocess_labels(labels, (2.0, 1.0, 1.0), PostprocessOptions(max_hole_area_mm2=0))
    assert (off[:, 10:12, 10:12] == 0).all()
