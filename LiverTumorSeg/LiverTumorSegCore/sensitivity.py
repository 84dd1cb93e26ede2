"""Tumour sensitivity: re-threshold the last result without running the network again (Qt-free).

Where the probabilities live: the job runs the command line with ``--probabilities`` into its
temporary work folder; :func:`load_probabilities` reads that file (float32, 2 components:
P(liver region), P(tumour)) right after the run and keeps, in Slicer's memory (a
:class:`KeptProbabilities` held by the module logic, not a node in the scene, not saved with
it), only the box around the liver region (argmax region, grown by one voxel) as two float16
arrays: P(liver parenchyma) and P(tumour), plus one byte per voxel for the threshold-independent
liver region (:meth:`KeptProbabilities.prepare`). That is 5 bytes per voxel of the box: about
23 MB for a typical liver box (100 x 210 x 220 voxels of a 512 x 512 x 150 CT) and at most
390 MB if the box were a whole 512 x 512 x 300 CT. While reading, the float32 file is briefly
held whole (8 bytes per voxel: 630 MB for 512 x 512 x 300). The work folder is deleted after
the import, as before.

:func:`apply_tumour_threshold` relabels the box with the library's one rule
(``LiverTumorSegLib.transforms.restore.labels_from_probabilities``) followed by the run's own
post-processing (``postprocess_labels`` with the run's options; exact on the box, since every
liver-region voxel lies inside it and it is bordered by background), then replaces only the
"Liver tumor" segment (its own layer; the Liver segment holds the whole liver region, which
does not depend on the threshold, and is not touched) and refreshes the report table: tumour
list, volumes, burden, confidences and ``options.tumour_threshold``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from . import mrml
from .errors import RunError

LIVER_SEGMENT_ID = "liver"
TUMOUR_SEGMENT_ID = "liver_tumor"
PROBABILITIES_FILE = "probabilities.nrrd"
SLIDER_RANGE = (0.05, 0.95)


@dataclass
class KeptProbabilities:
    """The last run's probabilities around the liver, on the input volume's grid."""

    box: Tuple[slice, slice, slice]  # (k, j, i) in the whole volume
    p_liver: np.ndarray  # float16, P(liver parenchyma), box shape
    p_tumour: np.ndarray  # float16, P(tumour), box shape
    ijk_to_ras: np.ndarray  # 4x4 of the volume
    postprocess: dict = field(default_factory=dict)  # the run's PostprocessOptions
    volume_node_id: Optional[str] = None
    segmentation_node_id: Optional[str] = None
    # threshold-independent part of the post-processing (fast path, see threshold_box):
    # 2 = the liver region kept by steps 1-2, 1 = holes filled by step 3, 0 = outside
    region: Optional[np.ndarray] = None

    @property
    def nbytes(self) -> int:
        extra = self.region.nbytes if self.region is not None else 0
        return int(self.p_liver.nbytes + self.p_tumour.nbytes + extra)

    @property
    def fast_path(self) -> bool:
        """With the default clean-up (largest liver component and tumours inside the liver) the
        liver region after steps 1-3 does not depend on the threshold: it is computed once."""
        pp = self.postprocess or {}
        return bool(pp.get("largest_liver_component", True)) and bool(pp.get("tumour_inside_liver", True))

    def prepare(self) -> None:
        """Compute the threshold-independent region once (1 byte per voxel of the box)."""
        if self.region is not None or not self.fast_path:
            return
        from LiverTumorSegLib.options import PostprocessOptions
        from LiverTumorSegLib.postprocess import largest_component, postprocess_labels
        from LiverTumorSegLib.transforms.restore import argmax_labels

        kept_region = largest_component(argmax_labels(self.p_liver, self.p_tumour) > 0)  # steps 1-2
        opts = dict(self.postprocess or {}, largest_liver_component=False, tumour_inside_liver=False,
                    min_tumour_volume_ml=0.0)
        filled, _ = postprocess_labels(kept_region.astype(np.uint8), self.spacing_kji, PostprocessOptions(**opts))
        region = (filled > 0).astype(np.uint8)
        region[kept_region] = 2
        self.region = region

    @property
    def spacing_kji(self) -> Tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)[::-1])


def _sitk_ijk_to_ras(image) -> np.ndarray:
    d = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())[None, :]
    m = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    m[:3, :3] = flip @ d
    m[:3, 3] = flip @ np.asarray(image.GetOrigin())
    return m


def from_arrays(p_region: np.ndarray, p_tumour: np.ndarray, ijk_to_ras: np.ndarray,
                offset_kji=(0, 0, 0), full_shape=None, postprocess: Optional[dict] = None) -> Optional[KeptProbabilities]:
    """Keep [P(liver region), P(tumour)] (k, j, i) around the liver region; None when there is no liver."""
    from LiverTumorSegLib.transforms.restore import argmax_labels
    from LiverTumorSegLib.utils.regions import bounding_box

    p_tumour = np.asarray(p_tumour, dtype=np.float32)
    p_liver = np.asarray(p_region, dtype=np.float32) - p_tumour
    box = bounding_box(argmax_labels(p_liver, p_tumour) > 0, 1)
    if box is None:
        return None
    full_shape = tuple(full_shape or p_tumour.shape)
    whole = tuple(slice(o + b.start, o + b.stop) for o, b in zip(offset_kji, box))
    if any(s.stop > n for s, n in zip(whole, full_shape)):
        raise RunError("The probabilities do not fit the input volume.")
    return KeptProbabilities(box=whole, p_liver=p_liver[box].astype(np.float16),
                             p_tumour=p_tumour[box].astype(np.float16), ijk_to_ras=np.asarray(ijk_to_ras, float),
                             postprocess=dict(postprocess or {}))


def load_probabilities(path, volume_node, crop: Optional["mrml.CropBox"] = None, written_matrix=None,
                       postprocess: Optional[dict] = None) -> Optional[KeptProbabilities]:
    """Read the child's ``--probabilities`` file (checked to lie on the written input's grid)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise RunError(f"Cannot read the probabilities {path}: {exc}") from None
    if image.GetNumberOfComponentsPerPixel() != 2 or image.GetDimension() != 3:
        raise RunError("The probabilities file does not hold 2 components per voxel.")
    arr = sitk.GetArrayViewFromImage(image)  # (k, j, i, 2) float32
    dims = mrml.image_dimensions(volume_node)
    full_shape = (dims[2], dims[1], dims[0])
    expected = crop.shape if crop is not None else full_shape
    if tuple(arr.shape[:3]) != tuple(expected):
        raise RunError("The probabilities are not on the input volume's grid (size mismatch).")
    expected_matrix = written_matrix if written_matrix is not None else mrml.ijk_to_ras(volume_node)
    if not np.allclose(_sitk_ijk_to_ras(image), expected_matrix, atol=1e-3, rtol=1e-4):
        raise RunError("The probabilities are not on the input volume's grid (geometry mismatch).")
    offset = (crop.k0, crop.j0, crop.i0) if crop is not None else (0, 0, 0)
    kept = from_arrays(arr[..., 0], arr[..., 1], mrml.ijk_to_ras(volume_node), offset, full_shape, postprocess)
    if kept is not None:
        kept.volume_node_id = volume_node.GetID()
        kept.prepare()
    return kept


def threshold_box(kept: KeptProbabilities, threshold: Optional[float], fast: bool = True) -> np.ndarray:
    """Labels (uint8, box shape) at ``threshold`` (None: argmax), post-processed as the run was.

    The labels are the library's ``labels_from_probabilities`` followed by ``postprocess_labels``
    with the run's options. ``fast`` (default clean-up only) gives exactly the same result
    quicker: steps 1-3 (largest component, tumours inside the liver, filled holes) act on the
    liver region, which no threshold changes, so they are computed once (:meth:`prepare`);
    per threshold only the tumour voxels of the kept region and step 4 (small tumours) remain.
    """
    from LiverTumorSegLib.options import PostprocessOptions
    from LiverTumorSegLib.postprocess import postprocess_labels
    from LiverTumorSegLib.transforms.restore import labels_from_probabilities

    labels = labels_from_probabilities(kept.p_liver, kept.p_tumour, threshold)
    if fast and kept.fast_path:
        kept.prepare()
        tumour = (labels == 2) & (kept.region == 2)
        liver = (kept.region > 0) & ~tumour
        if liver.any():  # else the library removes everything (a region made only of tumour)
            out = liver.astype(np.uint8)
            out[tumour] = 2
            step4 = dict(kept.postprocess or {}, largest_liver_component=False, tumour_inside_liver=False,
                         fill_holes=False)
            return postprocess_labels(out, kept.spacing_kji, PostprocessOptions(**step4))[0]
    labels, _ = postprocess_labels(labels, kept.spacing_kji, PostprocessOptions(**kept.postprocess))
    return labels


def _oriented_box_image(mask: np.ndarray, box, ijk_to_ras: np.ndarray):
    """A vtkOrientedImageData (values 0/1) covering ``box`` of the volume's grid."""
    slicer = mrml._slicer()
    vtk = mrml._vtk()
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    k, j, i = box
    image.SetExtent(i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
        np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    image.SetImageToWorldMatrix(mrml._vtk_matrix(ijk_to_ras))
    return image


def _box_sitk_image(labels: np.ndarray, kept: KeptProbabilities):
    """The box as a SimpleITK image in LPS (for the library's tumour list)."""
    import SimpleITK as sitk

    m = kept.ijk_to_ras
    flip = np.diag([-1.0, -1.0, 1.0])
    lps = flip @ m[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    start_ijk = np.array([kept.box[2].start, kept.box[1].start, kept.box[0].start], dtype=float)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps / spacing[None, :]).ravel()])
    image.SetOrigin([float(v) for v in flip @ (m[:3, :3] @ start_ijk + m[:3, 3])])
    return image


def updated_report(report: Optional[dict], labels: np.ndarray, kept: KeptProbabilities,
                   threshold: Optional[float]) -> dict:
    """The report with the tumour entries of ``labels`` (the box) at ``threshold``."""
    from LiverTumorSegLib.report import tumour_list

    report = dict(report or {})
    voxel_ml = float(np.prod(kept.spacing_kji)) / 1000.0
    tumours = tumour_list(_box_sitk_image(labels, kept), tumour_probability=kept.p_tumour)
    counts = np.bincount(labels.ravel(), minlength=3)
    region_ml = float(counts[1:].sum()) * voxel_ml
    tumour_ml = float(counts[2]) * voxel_ml
    report.update({
        "tumours": tumours,
        "tumour_count": len(tumours),
        "tumour_total_volume_ml": round(tumour_ml, 4),
        "tumour_burden_percent": round(100.0 * tumour_ml / region_ml, 3) if region_ml > 0 else 0.0,
        "liver_parenchyma_volume_ml": round(float(counts[1]) * voxel_ml, 3),
    })
    options = dict(report.get("options") or {})
    options["tumour_threshold"] = threshold
    report["options"] = options
    return report


def apply_tumour_threshold(segmentation_node, kept: KeptProbabilities, threshold: Optional[float],
                           table_node=None, report: Optional[dict] = None, show3d: bool = False) -> dict:
    """Re-threshold: replace the "Liver tumor" segment and refresh the report table.

    Returns the new report (also stored in the table node when given). ``report`` None: the
    table's own report. The Liver segment is not modified. Timing in ``report["rethreshold_s"]``.
    """
    t0 = time.perf_counter()
    if segmentation_node is None or segmentation_node.GetScene() is None:
        raise RunError("The segmentation of the last run is no longer in the scene.")
    segmentation = segmentation_node.GetSegmentation()
    tumour = segmentation.GetSegment(TUMOUR_SEGMENT_ID)
    if tumour is None:
        raise RunError("The segmentation has no 'Liver tumor' segment to update.")
    labels = threshold_box(kept, threshold)
    image = _oriented_box_image(labels == 2, kept.box, kept.ijk_to_ras)
    rep = mrml._binary_labelmap_name()
    was_modifying = segmentation_node.StartModify()
    try:
        tumour.SetLabelValue(1)
        tumour.AddRepresentation(rep, image)  # its own layer: the Liver segment's layer is not shared
        for name in ("InvalidateNonSourceRepresentations", "InvalidateNonMasterRepresentations"):
            if hasattr(segmentation, name):
                getattr(segmentation, name)()
                break
        segmentation.Modified()
    finally:
        segmentation_node.EndModify(was_modifying)
    if show3d:
        mrml.show_in_3d(segmentation_node)
    if report is None and table_node is not None:
        report = mrml.report_from_table(table_node)
    new_report = updated_report(report, labels, kept, threshold)
    new_report["rethreshold_s"] = round(time.perf_counter() - t0, 4)
    if table_node is not None:
        mrml.fill_report_table(table_node, new_report)
    return new_report
