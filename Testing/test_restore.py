"""The way back (transforms.restore) and the region helpers (utils.regions) on exact grids."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import pdist

from LiverTumorSegLib.geometry import Geometry, canonical_grid
from LiverTumorSegLib.transforms.restore import (
    box_geometry,
    box_probabilities_to_input_grid,
    resample_probabilities,
    restore_labels,
    sub_geometry,
)
from LiverTumorSegLib.utils.regions import bounding_box, max_diameter


def _oblique_source() -> Geometry:
    a = math.radians(20)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return Geometry(size=(23, 19, 11), spacing=(0.8, 0.9, 2.5), origin=(-7.0, 3.0, 11.0),
                    direction=tuple(float(v) for v in rot.ravel()))


def _grids_and_probs():
    source = _oblique_source()
    network = canonical_grid(source, (1.6, 1.6, 2.0))
    rng = np.random.default_rng(3)
    logits = ndimage.gaussian_filter(rng.normal(size=(3,) + network.shape_zyx), (0, 1, 1, 1)) * 4
    p = np.exp(logits) / np.exp(logits).sum(0)
    return network, source, p[1:].astype(np.float32)


def _centre_indices_in(source: Geometry, geo: Geometry) -> np.ndarray:
    """Continuous (i, j, k) indices in ``geo`` of every voxel centre of ``source``, as (z, y, x, 3)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in source.shape_zyx], indexing="ij")
    ijk = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(float)
    return geo.physical_to_index(source.index_to_physical(ijk)).reshape(source.shape_zyx + (3,))


def test_box_restore_of_the_whole_grid_equals_the_full_restore():
    network, source, probs = _grids_and_probs()
    full = resample_probabilities(probs, network, source)
    whole = tuple(slice(0, n) for n in network.shape_zyx)
    for box in (whole, ((0, 0, 0), network.shape_zyx), network):
        got = box_probabilities_to_input_grid(probs, network, box, source)
        assert got.shape == full.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, full, atol=1e-6)
    assert full.max() > 0.5  # not trivially zero


def test_box_restore_is_background_outside_the_box_and_exact_inside():
    network, source, probs = _grids_and_probs()
    start, shape = (1, 3, 2), (3, 6, 5)
    box = tuple(slice(a, a + n) for a, n in zip(start, shape))
    inner = probs[(slice(None),) + box]
    got = box_probabilities_to_input_grid(inner, network, box, source)
    # the same box given as (start, shape) and as its own Geometry
    np.testing.assert_array_equal(got, box_probabilities_to_input_grid(inner, network, (start, shape), source))
    box_geo = sub_geometry(network, start, shape)
    assert box_geometry(network, box) == box_geo
    np.testing.assert_array_equal(got, box_probabilities_to_input_grid(inner, None, box_geo, source))
    idx = _centre_indices_in(source, box_geo)
    size = np.asarray(box_geo.size, float)
    outside = np.any((idx < -0.5 - 1e-6) | (idx > size - 0.5 + 1e-6), axis=-1)
    inside = np.all((idx >= 1e-6) & (idx <= size - 1 - 1e-6), axis=-1)
    assert outside.any() and inside.sum() > 20
    assert not got[:, outside].any()  # background outside the box
    # between the box's voxel centres only box voxels interpolate: equal to the full restore
    # of the network-grid probabilities with zeros outside the box
    padded = np.zeros_like(probs)
    padded[(slice(None),) + box] = inner
    full = resample_probabilities(padded, network, source)
    np.testing.assert_allclose(got[:, inside], full[:, inside], atol=1e-6)
    # labels from a box restore: background outside
    labels = restore_labels(padded[0], padded[1], network, source, crop=True)
    assert not labels[outside].any()


def test_box_outside_the_network_grid_is_refused():
    network, source, probs = _grids_and_probs()
    with pytest.raises(ValueError, match="not inside"):
        box_probabilities_to_input_grid(probs[:, :2], network, ((0, 0, 0), (2, 99, 1)), source)
    with pytest.raises(TypeError):
        box_probabilities_to_input_grid(probs, None, ((0, 0, 0), (1, 1, 1)), source)
    with pytest.raises(ValueError, match="probabilities must be"):
        box_probabilities_to_input_grid(probs, network, ((0, 0, 0), (1, 1, 1)), source)


def test_bounding_box_margins_and_empty():
    m = np.zeros((6, 7, 8), bool)
    assert bounding_box(m) is None
    m[2, 3:5, 7] = True
    assert bounding_box(m) == (slice(2, 3), slice(3, 5), slice(7, 8))
    assert bounding_box(m, 1) == (slice(1, 4), slice(2, 6), slice(6, 8))  # clipped at the edge
    assert bounding_box(m, (0, 3, 9)) == (slice(2, 3), slice(0, 7), slice(0, 8))
    assert bounding_box(m[2], 0) == (slice(3, 5), slice(7, 8))  # any dimension
    with pytest.raises(ValueError):
        bounding_box(m, (1, 2))


def test_max_diameter_equals_brute_force_for_small_large_and_flat_sets():
    rng = np.random.default_rng(1)
    assert max_diameter(np.zeros((1, 3))) == 0.0 and max_diameter(np.zeros((0, 3))) == 0.0
    for n in (5, 64, 65, 500, 4000):
        pts = rng.normal(size=(n, 3)) * (3.0, 1.0, 0.2)
        assert max_diameter(pts) == pytest.approx(pdist(pts).max(), abs=1e-9)
    flat = np.array(list(itertools.product(range(40), range(30), [0.0])), float)  # one slice: coplanar
    assert max_diameter(flat) == pytest.approx(math.hypot(39, 29))
    line = np.stack([np.arange(100.0), np.zeros(100), np.zeros(100)], 1)  # collinear
    assert max_diameter(line) == pytest.approx(99.0)
