"""Two stages on the same corridor: find the liver coarsely, then segment it finely.

``inference.segment`` hands a :class:`~LiverTumorSegLib.weights.TwoStageModel` here:

1. stage 1, the liver locator, runs over the whole CT on its coarse grid (its own
   preprocessing, body crop as usual) -> P(liver region) on that grid;
2. the largest connected component of P > ``liver_threshold`` is the liver; its physical
   bounding box grows by ``box_margin_mm`` on every side and is mapped to an index box of the
   INPUT image (clipped to it). The box is the only thing handed from stage 1 to stage 2;
3. stage 2 (the segmenter) walks the ordinary single-stage corridor on the input image cropped
   to that box (``sitk.RegionOfInterest``: same voxels, spacing and direction, shifted origin,
   so the geometry stays exact for any orientation) and its labels are put back into the full
   input grid (background outside the box).

No liver (nothing above threshold, or less than ``min_liver_ml`` from stage 1 or, after it, from
stage 2): an empty segmentation and
a report that says so (``"no_liver": true`` and a note); never a tumour, never an error.

Thin scans: a scan thinner than ``min_locator_extent_mm`` along any axis (e.g. 3 slices of
1 mm: less than one voxel of the locator's 4 mm grid) gives the locator too little to see, so
stage 1 is skipped and stage 2 runs on the whole scan; the report says so
(``two_stage.locator_skipped``) and a note tells the user to check the result.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..progress import ProgressReporter

STAGE1_SHARE = 0.9  # share of the "preprocess" progress phase used by stage 1 (stage 2's preprocessing: the rest)
THIN_SCAN_NOTE = ("the scan is {extent:.1f} mm thin along one axis, under the {limit:.0f} mm the liver locator "
                  "(stage 1) needs: it was skipped and the segmenter (stage 2) ran on the whole scan; check that "
                  "what it calls liver is liver")
TOO_LITTLE_LIVER_NOTE = ("the segmenter (stage 2) found only {ml:.1f} mL of liver in the located region, under the "
                         "model's minimum of {limit:g} mL: treated as no liver (empty segmentation)")
NO_LIVER_NOTE = ("no liver found by the liver locator (stage 1): empty segmentation; the scan may not contain "
                 "the liver (e.g. a head or chest-only CT)")


class _MappedReporter(ProgressReporter):
    """Forwards (phase, fraction, message) to ``parent`` after ``fn`` maps it, so that the two
    stages together give one monotonic progress (and every report stays a cancellation point)."""

    def __init__(self, parent: ProgressReporter, fn: Callable[[str, float, str], tuple[str, float, str]]) -> None:
        super().__init__(None, {})
        self.parent = parent
        self.fn = fn

    def report(self, phase: str, fraction: float = 0.0, message: str = "") -> None:
        self.parent.report(*self.fn(phase, fraction, message))


def _stage1_map(phase: str, fraction: float, message: str) -> tuple[str, float, str]:
    f = min(1.0, max(0.0, fraction))
    inner = 0.2 * f if phase == "preprocess" else 0.2 + 0.8 * f  # preprocess, then the network
    return "preprocess", STAGE1_SHARE * inner, f"locating the liver: {message}" if message else "locating the liver"


def _stage2_map(phase: str, fraction: float, message: str) -> tuple[str, float, str]:
    if phase == "preprocess":
        return phase, STAGE1_SHARE + (1.0 - STAGE1_SHARE) * min(1.0, max(0.0, fraction)), message
    if phase == "postprocess":  # the full-grid report comes after stage 2's clean-up
        return phase, 0.9 * min(1.0, max(0.0, fraction)), message
    return phase, fraction, message


def locate(image: sitk.Image, locator: Any, options: Any, device: Any, reporter: ProgressReporter,
           notes: list) -> tuple[np.ndarray, sitk.Image, dict, dict]:
    """Stage 1: (P(liver region) (z, y, x) on the locator's grid, that grid, compute info, timings).

    A module-level function so tests can substitute known probabilities (e.g. from a
    reference label) and check the box logic alone."""
    from ..inference import predict_network_grid
    from ..preprocessing import preprocess_image

    timings = {}
    t = time.perf_counter()
    reporter.report("preprocess", 0.0, "coarse grid")
    prepared = preprocess_image(image, locator.preprocessing)
    timings["preprocess"] = time.perf_counter() - t
    reporter.report("preprocess", 1.0, f"coarse grid {tuple(prepared.array.shape)}")
    t = time.perf_counter()
    spacing_zyx = tuple(float(v) for v in prepared.grid.GetSpacing()[::-1])
    opts = options.for_model(locator.metadata)  # the locator's window and floor, not stage 2's
    p1, p2, compute = predict_network_grid(locator.model, prepared.array, spacing_zyx, opts, device, reporter, notes)
    timings["inference"] = time.perf_counter() - t
    return p1 + p2, prepared.grid, compute, timings


def liver_box(p_liver: np.ndarray, grid: sitk.Image, image: sitk.Image, margin_mm: float, threshold: float = 0.5,
              min_liver_ml: float = 0.0) -> tuple[Optional[tuple[tuple[int, int], ...]], dict]:
    """Index box ((x0, x1), (y0, y1), (z0, z1)) of ``image`` (half-open, clipped) that holds the
    largest liver component of ``p_liver`` (on ``grid``) plus ``margin_mm``; None when none.

    The component's box is taken at its voxel EDGES on the coarse grid (a voxel's whole extent
    may hold liver), grown by the margin in physical space, and every input voxel whose centre
    lies inside it, plus one voxel, is kept (for oblique inputs: the index box around the
    physical box's eight corners)."""
    from ..geometry import Geometry
    from ..postprocess import largest_component

    info: dict = {"threshold": threshold, "margin_mm": margin_mm}
    mask = p_liver > threshold
    if not mask.any():
        info["liver_ml"] = 0.0
        return None, info
    mask = largest_component(mask)
    g = Geometry.from_image(grid)
    voxel_ml = float(np.prod(g.spacing)) / 1000.0
    info["liver_ml"] = round(float(mask.sum()) * voxel_ml, 2)
    if info["liver_ml"] < min_liver_ml:
        info["below_min_liver_ml"] = min_liver_ml
        return None, info
    zyx = np.nonzero(mask)
    lo = np.array([zyx[2].min(), zyx[1].min(), zyx[0].min()], float) - 0.5  # (i, j, k) voxel edges
    hi = np.array([zyx[2].max(), zyx[1].max(), zyx[0].max()], float) + 0.5
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1)
                        for c in (0, 1)])
    phys = g.index_to_physical(corners)
    pmin = phys.min(axis=0) - margin_mm
    pmax = phys.max(axis=0) + margin_mm
    info["box_lps_mm"] = [[round(float(a), 2), round(float(b), 2)] for a, b in zip(pmin, pmax)]
    box_corners = np.array([[(pmin, pmax)[a][0], (pmin, pmax)[b][1], (pmin, pmax)[c][2]] for a in (0, 1)
                            for b in (0, 1) for c in (0, 1)])
    src = Geometry.from_image(image)
    idx = src.physical_to_index(box_corners)
    size = np.asarray(src.size)
    i0 = np.clip(np.floor(idx.min(axis=0) - 1e-6).astype(int), 0, size)
    i1 = np.clip(np.ceil(idx.max(axis=0) + 1e-6).astype(int) + 1, 0, size)
    if np.any(i1 <= i0):  # the box lies outside the image (cannot happen for a liver found in it)
        return None, info
    box = tuple((int(a), int(b)) for a, b in zip(i0, i1))
    info["box_index_xyz"] = [list(b) for b in box]
    info["box_fraction_of_image"] = round(float(np.prod(i1 - i0)) / float(np.prod(size)), 4)
    return box, info


def thinnest_extent_mm(image: sitk.Image) -> float:
    """The scan's smallest physical extent along its index axes (voxel count x spacing)."""
    return float(min(n * sp for n, sp in zip(image.GetSize(), image.GetSpacing())))


def crop(image: sitk.Image, box: tuple[tuple[int, int], ...]) -> sitk.Image:
    """The input voxels inside the index box, with their exact geometry (shifted origin)."""
    return sitk.RegionOfInterest(image, [b - a for a, b in box], [a for a, _ in box])


def segment_two_stage(image: sitk.Image, bundle: Any, opts: Any, reporter: ProgressReporter, device: Any,
                      input_path: Optional[str], timings: dict, notes: list, t_start: float):
    """Called by ``inference.segment`` (after validation, with threads set) for a bundle."""
    from ..inference import SegmentationResult, _segment
    from ..report import build_report

    extent = thinnest_extent_mm(image)
    limit = bundle.min_locator_extent_mm
    if extent < limit:  # too thin for the coarse locator: stage 2 sees the whole scan
        notes.append(THIN_SCAN_NOTE.format(extent=extent, limit=limit))
        box = tuple((0, int(n)) for n in image.GetSize())  # the whole scan
        box_info = {"locator_skipped": "thin_scan", "thinnest_extent_mm": round(extent, 2),
                    "min_locator_extent_mm": limit, "box_index_xyz": [list(b) for b in box],
                    "box_fraction_of_image": 1.0}
        compute1 = {"device": None, "windows": 0, "skipped": True}
        reporter.report("preprocess", STAGE1_SHARE, "scan too thin for the liver locator: whole scan")
    else:
        # stage 1: the locator sees the whole CT; the user's --window is meant for stage 2
        stage1_opts = replace(opts, window=None, return_probabilities=False)
        p_liver, grid, compute1, t1 = locate(image, bundle.locator, stage1_opts, device,
                                             _MappedReporter(reporter, _stage1_map), notes)
        timings["stage1_preprocess"], timings["stage1_inference"] = t1["preprocess"], t1["inference"]
        t = time.perf_counter()
        box, box_info = liver_box(p_liver, grid, image, bundle.box_margin_mm, bundle.liver_threshold,
                                  bundle.min_liver_ml)
        del p_liver
        timings["stage1_box"] = time.perf_counter() - t
        reporter.report("preprocess", STAGE1_SHARE, "liver located" if box else "no liver found")

    shape_zyx = tuple(int(v) for v in image.GetSize()[::-1])
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    probabilities = None
    # (P(liver parenchyma), P(tumour)) on the whole input grid, 0 outside the box: the report's
    # confidences and quality flags and ``segment --probabilities`` read them as for one stage
    p_liver_in = np.zeros(shape_zyx, dtype=np.float16)
    p_tumour_in = np.zeros(shape_zyx, dtype=np.float16)
    compute: dict = {"device": compute1.get("device"), "windows": 0, "locator": compute1}
    pp_info = None
    if box is None:
        notes.append(NO_LIVER_NOTE)
        if opts.return_probabilities:
            probabilities = np.zeros((3,) + shape_zyx, dtype=np.float32)
            probabilities[0] = 1.0
    else:
        sub = crop(image, box)
        t2: dict = {}
        res = _segment(sub, bundle.segmenter, opts, _MappedReporter(reporter, _stage2_map), device, input_path, t2,
                       notes, t_start)
        for k in ("preprocess", "inference", "restore", "postprocess"):
            timings[f"stage2_{k}"] = t2.get(k, 0.0)
        t = time.perf_counter()
        (x0, x1), (y0, y1), (z0, z1) = box
        labels[z0:z1, y0:y1, x0:x1] = sitk.GetArrayViewFromImage(res.labelmap)
        if res.input_probabilities is not None:
            p_liver_in[z0:z1, y0:y1, x0:x1] = res.input_probabilities[0]
            p_tumour_in[z0:z1, y0:y1, x0:x1] = res.input_probabilities[1]
        if res.probabilities is not None:
            probabilities = np.zeros((3,) + shape_zyx, dtype=np.float32)
            probabilities[0] = 1.0
            probabilities[:, z0:z1, y0:y1, x0:x1] = res.probabilities
        compute = {**res.report.get("compute", {}), "locator": compute1}
        pp_info = res.report.get("postprocessing")
        del res, sub
        liver_ml = float(np.count_nonzero(labels[z0:z1, y0:y1, x0:x1])) * float(np.prod(image.GetSpacing())) / 1000.0
        if "locator_skipped" not in box_info and 0.0 < liver_ml < bundle.min_liver_ml:
            # the same floor as stage 1's: a few mL of "liver" in the box is noise, not a liver
            notes.append(TOO_LITTLE_LIVER_NOTE.format(ml=liver_ml, limit=bundle.min_liver_ml))
            box_info["stage2_liver_ml_below_min"] = round(liver_ml, 3)
            labels[:] = 0
            p_liver_in[:] = 0
            p_tumour_in[:] = 0
            if probabilities is not None:
                probabilities[:] = 0.0
                probabilities[0] = 1.0
        timings["paste"] = time.perf_counter() - t

    for k in ("preprocess", "inference", "restore", "postprocess"):  # totals, as for one stage
        timings[k] = timings.get(f"stage1_{k}", 0.0) + timings.get(f"stage2_{k}", 0.0)
    t = time.perf_counter()
    reporter.report("postprocess", 0.9, "report")
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    no_liver = not bool(labels.any())
    if box is not None and no_liver and "stage2_liver_ml_below_min" not in box_info:
        notes.append("the liver locator found a liver region but the segmenter (stage 2) labelled no liver in it")
    report = build_report(
        labelmap, model=bundle.identity(), device=compute.get("device"), timings=timings, postprocessing=pp_info,
        notes=notes, input_path=input_path,
        extra={"compute": compute, "options": opts.to_dict(), "no_liver": no_liver,
               "two_stage": {"liver_found": None if "locator_skipped" in box_info else box is not None,
                             **box_info}},
        probabilities=(p_liver_in, p_tumour_in), model_metadata=bundle.metadata,
    )
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    reporter.report("postprocess", 1.0, "done")
    return SegmentationResult(labelmap=labelmap, report=report, timings=timings, probabilities=probabilities,
                              input_probabilities=(p_liver_in, p_tumour_in))
