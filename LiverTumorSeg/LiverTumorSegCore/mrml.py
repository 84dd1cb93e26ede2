"""MRML side of a segmentation run, without Qt: checks, input export, result import, report table.

Everything here works on a plain ``vtkMRMLScene`` (real Slicer, or the ``slicer-core`` wheel in
tests). Functions that change the scene do so only at the very end of a successful run and undo
their own changes when they fail, so that a cancelled or failed run leaves the scene as it was.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from LiverTumorSegLib.terminology import SEGMENTS, SegmentInfo  # the library's (no torch)

from .errors import InputVolumeError, OutputSegmentationError, RoiError, RunError, SegmentationExistsError

REPORT_ATTRIBUTE = "LiverTumorSeg.Report"  # the full JSON report, kept on the table node
SOURCE_ATTRIBUTE = "LiverTumorSeg.SourceVolumeID"


def _slicer():
    import slicer  # Slicer's own module, or the slicer-core wheel

    return slicer


def _vtk():
    import vtk

    return vtk


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------
def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's IJK-to-RAS matrix (its own, without parent transforms) as a 4x4 array."""
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(a: np.ndarray):
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def image_dimensions(volume_node) -> Tuple[int, int, int]:
    image = volume_node.GetImageData()
    return tuple(int(d) for d in image.GetDimensions()) if image is not None else (0, 0, 0)


def _array_from_image(image) -> np.ndarray:
    """(k, j, i) numpy view of a single-component vtkImageData."""
    from vtk.util import numpy_support

    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    arr = numpy_support.vtk_to_numpy(scalars)
    return arr.reshape(dims[2], dims[1], dims[0])


def _image_from_array(arr: np.ndarray):
    """A vtkImageData (origin 0, spacing 1, extent from 0) holding a copy of ``arr`` (k, j, i)."""
    vtk = _vtk()
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(arr)
    image = vtk.vtkImageData()
    image.SetDimensions(int(arr.shape[2]), int(arr.shape[1]), int(arr.shape[0]))
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True,
                                         array_type=numpy_support.get_vtk_array_type(arr.dtype))
    vtk_arr.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtk_arr)
    return image


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def validate_input_volume(volume_node) -> None:
    """Raise :class:`InputVolumeError` unless ``volume_node`` is a 3D single-component CT volume."""
    if volume_node is None:
        raise InputVolumeError("No input volume selected: choose the CT volume to segment.")
    if not hasattr(volume_node, "IsA") or not volume_node.IsA("vtkMRMLVolumeNode"):
        cls = volume_node.GetClassName() if hasattr(volume_node, "GetClassName") else type(volume_node).__name__
        raise InputVolumeError(f"The input must be a CT volume, not a {cls}.")
    name = volume_node.GetName()
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputVolumeError(f"'{name}' is a label map volume, not a CT image: choose the CT scan as input.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLTensorVolumeNode"):
        raise InputVolumeError(f"'{name}' is a {volume_node.GetClassName()}; a scalar CT volume is needed.")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputVolumeError(f"'{name}' has no image data (is it still loading?).")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputVolumeError(f"'{name}' has {image.GetNumberOfScalarComponents()} components per voxel "
                               "(a colour or vector image); a single-component CT volume is needed.")
    dims = image_dimensions(volume_node)
    if min(dims) < 2:
        raise InputVolumeError(f"'{name}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels); "
                               "a 3D CT volume with several slices is needed.")
    spacing = volume_node.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputVolumeError(f"'{name}' has an invalid voxel spacing {tuple(spacing)}.")
    transform = volume_node.GetParentTransformNode()
    if transform is not None and not transform.IsTransformToWorldLinear():
        raise InputVolumeError(f"'{name}' is under a non-linear transform; harden the transform first "
                               "(Data module: right-click the transform, Harden transform).")


def has_segments(segmentation_node) -> bool:
    return segmentation_node is not None and segmentation_node.GetSegmentation().GetNumberOfSegments() > 0


def validate_output_segmentation(segmentation_node, replace_existing: bool) -> None:
    """Raise unless ``segmentation_node`` (None = create a new one) can receive the result."""
    if segmentation_node is None:
        return
    if not hasattr(segmentation_node, "IsA") or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise OutputSegmentationError("The output must be a segmentation node.")
    if has_segments(segmentation_node) and not replace_existing:
        n = segmentation_node.GetSegmentation().GetNumberOfSegments()
        raise SegmentationExistsError(
            f"Segmentation '{segmentation_node.GetName()}' already has {n} segment(s); confirm replacing them "
            "(replace_existing=True) or choose a new output segmentation.")


# ---------------------------------------------------------------------------------------------
# region of interest
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """Half-open voxel ranges of the volume, in numpy (k, j, i) order."""

    k0: int
    k1: int
    j0: int
    j1: int
    i0: int
    i1: int

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        return slice(self.k0, self.k1), slice(self.j0, self.j1), slice(self.i0, self.i1)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.k1 - self.k0, self.j1 - self.j0, self.i1 - self.i0

    def is_full(self, dims_ijk: Sequence[int]) -> bool:
        return (self.i0, self.j0, self.k0) == (0, 0, 0) and (self.i1, self.j1, self.k1) == tuple(dims_ijk)


def roi_crop_box(volume_node, roi_node) -> CropBox:
    """The voxels of ``volume_node`` that the markups ROI overlaps (its oriented box, in world
    coordinates, mapped through the volume's parent transform into its IJK grid)."""
    if roi_node is None:
        raise RoiError("No region of interest given.")
    if not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise RoiError(f"'{roi_node.GetName()}' is a {roi_node.GetClassName()}, not a markups ROI.")
    size = [float(s) for s in roi_node.GetSize()]
    if not all(math.isfinite(s) and s > 0 for s in size):
        raise RoiError(f"ROI '{roi_node.GetName()}' has no extent (size {size}); place it around the liver.")
    obj_to_world = roi_node.GetObjectToWorldMatrix()
    m = np.array([[obj_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    half = np.array(size) / 2.0
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    world = corners @ m.T
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        vtk = _vtk()
        slicer = _slicer()
        to_local = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, transform, to_local)
        a = np.array([[to_local.GetElement(r, c) for c in range(4)] for r in range(4)])
        world = world @ a.T
    ras_to_ijk = np.linalg.inv(ijk_to_ras(volume_node))
    ijk = (world @ ras_to_ijk.T)[:, :3]
    lo = np.floor(ijk.min(axis=0) + 0.5).astype(int)
    hi = np.floor(ijk.max(axis=0) + 0.5).astype(int) + 1
    dims = np.array(image_dimensions(volume_node))
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, dims)
    if np.any(hi - lo < 1):
        raise RoiError(f"ROI '{roi_node.GetName()}' does not overlap volume '{volume_node.GetName()}'.")
    if np.any(hi - lo < 2):
        raise RoiError(f"ROI '{roi_node.GetName()}' covers less than two voxels along an axis of "
                       f"'{volume_node.GetName()}'; enlarge it.")
    return CropBox(k0=int(lo[2]), k1=int(hi[2]), j0=int(lo[1]), j1=int(hi[1]), i0=int(lo[0]), i1=int(hi[0]))


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def write_volume(volume_node, path: str, crop: Optional[CropBox] = None) -> Tuple[Tuple[int, int, int], np.ndarray]:
    """Write the volume (or its crop) to ``path`` (.nrrd) through a storage node that is never
    added to the scene. Returns the written (k, j, i) shape and IJK-to-RAS matrix."""
    slicer = _slicer()
    node = volume_node
    matrix = ijk_to_ras(volume_node)
    dims = image_dimensions(volume_node)
    if crop is not None and not crop.is_full(dims):
        arr = _array_from_image(volume_node.GetImageData())[crop.slices]
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(volume_node.GetName())
        node.SetAndObserveImageData(_image_from_array(arr))
        matrix = matrix.copy()
        matrix[:3, 3] = (matrix @ np.array([crop.i0, crop.j0, crop.k0, 1.0]))[:3]
        node.SetIJKToRASMatrix(_vtk_matrix(matrix))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file: speed over size
    if not storage.WriteData(node):
        raise RunError(f"Cannot write the input volume to {path}.")
    d = image_dimensions(node)
    return (d[2], d[1], d[0]), matrix


def read_labelmap(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read a label map file into a vtkMRMLLabelMapVolumeNode (outside the scene); return its
    (k, j, i) array and IJK-to-RAS matrix."""
    slicer = _slicer()
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise RunError(f"Cannot read the segmentation result {path}.")
    arr = np.array(_array_from_image(node.GetImageData()), copy=True)
    return arr, ijk_to_ras(node)


def labels_on_input_grid(labels: np.ndarray, labels_matrix: np.ndarray, volume_node,
                         crop: Optional[CropBox] = None, written_matrix: Optional[np.ndarray] = None,
                         atol_mm: float = 1e-3) -> np.ndarray:
    """Check the result's geometry against what was sent and return labels on the full input grid."""
    dims = image_dimensions(volume_node)
    full_shape = (dims[2], dims[1], dims[0])
    expected_shape = crop.shape if crop is not None else full_shape
    if tuple(labels.shape) != tuple(expected_shape):
        raise RunError(f"The segmentation result has {labels.shape[::-1]} voxels but the input had "
                       f"{tuple(expected_shape)[::-1]}.")
    expected_matrix = written_matrix if written_matrix is not None else ijk_to_ras(volume_node)
    extent = np.array(labels.shape[::-1], dtype=float)
    tol = atol_mm / max(1.0, float(extent.max()))
    if not np.allclose(labels_matrix[:3, :3], expected_matrix[:3, :3], atol=tol, rtol=1e-4) or \
            not np.allclose(labels_matrix[:3, 3], expected_matrix[:3, 3], atol=atol_mm):
        raise RunError("The segmentation result is not on the input volume's grid (geometry mismatch).")
    values = np.unique(labels)
    bad = [int(v) for v in values if int(v) not in (0, 1, 2)]
    if bad:
        raise RunError(f"The segmentation result has unexpected label values {bad} (expected 0, 1, 2).")
    labels = labels.astype(np.uint8, copy=False)
    if crop is None or crop.is_full(dims):
        return labels
    full = np.zeros(full_shape, dtype=np.uint8)
    full[crop.slices] = labels
    return full


# ---------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------
def _binary_labelmap_name() -> str:
    slicer = _slicer()
    return slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def _import_labelmap(labels: np.ndarray, matrix: np.ndarray) -> dict:
    """Import the label map with ``ImportLabelmapToSegmentationNode`` in a private staging scene
    (the user's scene never sees the temporary nodes). Returns {label value: oriented binary
    labelmap}; all values share one vtkOrientedImageData (one layer), as the import makes them."""
    slicer = _slicer()
    staging = slicer.vtkMRMLScene()
    try:
        staging_seg = staging.AddNewNodeByClass("vtkMRMLSegmentationNode")
        labelmap = staging.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        labelmap.SetAndObserveImageData(_image_from_array(labels.astype(np.uint8, copy=False)))
        labelmap.SetIJKToRASMatrix(_vtk_matrix(matrix))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, staging_seg):
            raise RunError("Cannot import the result label map into a segmentation.")
        staging.RemoveNode(labelmap)
        rep = _binary_labelmap_name()
        segmentation = staging_seg.GetSegmentation()
        copies = {}  # one deep copy per shared layer, so the result keeps sharing it
        out = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            source = segment.GetRepresentation(rep)
            key = source.GetAddressAsString("vtkOrientedImageData")
            if key not in copies:
                copies[key] = slicer.vtkOrientedImageData()
                copies[key].DeepCopy(source)
            out[int(segment.GetLabelValue())] = copies[key]
        return out
    finally:
        staging.Clear(1)


def _set_source_representation(segmentation) -> None:
    rep = _binary_labelmap_name()
    if hasattr(segmentation, "SetSourceRepresentationName"):
        segmentation.SetSourceRepresentationName(rep)
    else:  # Slicer < 5.4
        segmentation.SetMasterRepresentationName(rep)


def _tag_segment(segment, definition: SegmentInfo) -> None:
    slicer = _slicer()
    segment.SetName(definition.name)
    segment.SetColor(*definition.color)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), definition.terminology_string)


def segment_tag(segment, name: str) -> Optional[str]:
    """A segment's tag value (None when absent); ``GetTag`` returns it through an out-argument."""
    vtk = _vtk()
    value = vtk.reference("")
    if not segment.GetTag(name, value):
        return None
    return str(value)


def segment_terminology(segment) -> Optional[str]:
    """The segment's ``TerminologyEntry`` tag (``LiverTumorSegLib.terminology.parse_terminology_string``
    splits it), None when it has none."""
    return segment_tag(segment, _slicer().vtkSegment.GetTerminologyEntryTagName())


def import_labels_into_segmentation(volume_node, labels: np.ndarray, segmentation_node=None,
                                    replace_existing: bool = False, name: Optional[str] = None,
                                    show3d: bool = True,
                                    definitions: Sequence[SegmentInfo] = SEGMENTS,
                                    liver_includes_tumours: bool = False):
    """Put the label map (on ``volume_node``'s grid, (k, j, i)) into a segmentation node.

    ``liver_includes_tumours`` False: one shared layer, Liver = label 1 (parenchyma), as the
    library's .seg.nrrd writer. True (the module's runs): Liver = the whole liver region
    (labels >= 1, the report's liver volume) and Liver tumor = label 2 on its own layer,
    overlapping it, so that the tumour-sensitivity slider can change the tumour segment without
    touching the Liver segment (exporting in the order liver, tumour gives the labels back).

    Creates the node (added to the volume's scene) when ``segmentation_node`` is None; otherwise
    replaces its segments, which requires ``replace_existing``. On any failure the scene is
    restored: a created node is removed, an existing node gets its previous segments back.
    """
    slicer = _slicer()
    validate_output_segmentation(segmentation_node, replace_existing)
    scene = volume_node.GetScene()
    if scene is None:
        raise InputVolumeError(f"Volume '{volume_node.GetName()}' is not in a scene.")
    if liver_includes_tumours:
        imported = _import_labelmap((labels >= 1).astype(np.uint8), ijk_to_ras(volume_node))
        imported.update({2: v for k, v in _import_labelmap(np.where(labels == 2, 2, 0).astype(np.uint8),
                                                           ijk_to_ras(volume_node)).items() if k == 2})
    else:
        imported = _import_labelmap(labels, ijk_to_ras(volume_node))  # before touching the scene
    rep = _binary_labelmap_name()

    created = segmentation_node is None
    backup = None
    old_transform_id = None
    old_reference = None
    if created:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                    name or f"{volume_node.GetName()} liver segmentation")
    else:
        backup = slicer.vtkSegmentation()
        backup.DeepCopy(segmentation_node.GetSegmentation())
        old_transform_id = segmentation_node.GetTransformNodeID()
        old_reference = segmentation_node.GetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole())
    try:
        was_modifying = segmentation_node.StartModify()
        try:
            if created:
                segmentation_node.CreateDefaultDisplayNodes()
            segmentation = segmentation_node.GetSegmentation()
            segmentation.RemoveAllSegments()
            _set_source_representation(segmentation)
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            for definition in definitions:
                value = definition.label
                oriented = imported.get(value)
                if oriented is None:  # nothing of this label (e.g. no tumour found)
                    segment_id = segmentation.AddEmptySegment(definition.id, definition.name, definition.color)
                    segment = segmentation.GetSegment(segment_id)
                else:
                    segment = slicer.vtkSegment()
                    segment.AddRepresentation(rep, oriented)
                    segment.SetLabelValue(value)
                    segmentation.AddSegment(segment, definition.id)
                _tag_segment(segment, definition)
            segmentation_node.SetAttribute(SOURCE_ATTRIBUTE, volume_node.GetID() or "")
        finally:
            segmentation_node.EndModify(was_modifying)
        place_in_subject_hierarchy(segmentation_node, volume_node)
        if show3d:
            show_in_3d(segmentation_node)
    except Exception:
        if created:
            remove_node(scene, segmentation_node)
        else:
            segmentation_node.GetSegmentation().DeepCopy(backup)
            segmentation_node.SetAndObserveTransformNodeID(old_transform_id)
            role = segmentation_node.GetReferenceImageGeometryReferenceRole()
            segmentation_node.SetNodeReferenceID(role, old_reference)
        raise
    return segmentation_node


def show_in_3d(segmentation_node) -> bool:
    """Build the closed-surface representation so the segments show in 3D views. Skipped (False)
    when the node has no display node (no scene, or a scene without displays)."""
    display = segmentation_node.GetDisplayNode()
    if display is None:
        return False
    ok = bool(segmentation_node.CreateClosedSurfaceRepresentation())
    display.SetVisibility3D(True)
    display.SetPreferredDisplayRepresentationName3D(
        _slicer().vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    return ok


def place_in_subject_hierarchy(node, volume_node) -> None:
    """Put ``node`` beside the input: under the input's study (or its parent folder)."""
    scene = node.GetScene()
    sh = scene.GetSubjectHierarchyNode() if scene is not None else None
    if sh is None:
        return
    slicer = _slicer()
    volume_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetSceneItemID()
    if volume_item:
        study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
        item = sh.GetItemParent(volume_item)
        parent = item or parent
        while item and item != sh.GetSceneItemID():
            if sh.GetItemLevel(item) == study_level:
                parent = item
                break
            item = sh.GetItemParent(item)
    node_item = sh.GetItemByDataNode(node)
    if not node_item:
        sh.CreateItem(parent, node)
    elif sh.GetItemParent(node_item) != parent:
        sh.SetItemParent(node_item, parent)


def segment_ids(segmentation_node) -> List[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def export_labels(segmentation_node, reference_volume, segment_ids_in_order: Optional[Sequence[str]] = None) -> np.ndarray:
    """Export segments (later ones win where they overlap) to a (k, j, i) label array on the
    reference volume's grid; used by tests and the batch script."""
    slicer = _slicer()
    vtk = _vtk()
    ids = vtk.vtkStringArray()
    for sid in (segment_ids_in_order or segment_ids(segmentation_node)):
        ids.InsertNextValue(sid)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene = segmentation_node.GetScene()
    scene.AddNode(labelmap)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_volume):
            raise RunError("Cannot export the segments to a label map.")
        return np.array(_array_from_image(labelmap.GetImageData()), copy=True)
    finally:
        scene.RemoveNode(labelmap)


# ---------------------------------------------------------------------------------------------
# report table
# ---------------------------------------------------------------------------------------------
REPORT_COLUMNS = ("Structure", "Volume (mL)", "Max diameter (mm)", "Centre R (mm)", "Centre A (mm)",
                  "Centre S (mm)", "Confidence", "Note")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else ""


def _ras(tumour: dict) -> Optional[Sequence[float]]:
    if tumour.get("centroid_ras_mm") is not None:
        return tumour["centroid_ras_mm"]
    lps = tumour.get("centroid_lps_mm")
    if lps is not None and len(lps) == 3:
        return [-float(lps[0]), -float(lps[1]), float(lps[2])]
    return None


def report_rows(report: dict) -> List[List[str]]:
    """Table rows (strings) for a library report: liver, tumours in total, then each tumour."""
    tumours = list(report.get("tumours") or [])
    count = int(report.get("tumour_count", len(tumours)) or 0)
    total = report.get("tumour_total_volume_ml")
    if total is None:
        total = sum(float(t.get("volume_ml") or 0.0) for t in tumours)
    rows = [
        ["Liver", _fmt(report.get("liver_volume_ml")), "", "", "", "", "", "incl. tumours"],
        ["Liver tumors (all)", _fmt(total, 3), "", "", "", "", "",
         f"{count} tumour(s), burden {_fmt(report.get('tumour_burden_percent'))} % of liver volume"],
    ]
    for i, t in enumerate(tumours, start=1):
        ras = _ras(t) or ("", "", "")
        note = f"max P(tumour) {_fmt(t.get('max_probability'))}" if t.get("max_probability") is not None else ""
        rows.append([f"Tumor {t.get('id', i)}", _fmt(t.get("volume_ml"), 3), _fmt(t.get("max_diameter_mm"), 1),
                     _fmt(ras[0], 1), _fmt(ras[1], 1), _fmt(ras[2], 1), _fmt(t.get("confidence")), note])
    return rows


def quality_flags(report: Optional[dict]) -> List[dict]:
    """The report's quality flags, warnings first (``[]`` for none or an older report)."""
    flags = [f for f in (report or {}).get("quality") or [] if isinstance(f, dict)]
    return sorted(flags, key=lambda f: f.get("severity") != "warning")


def quality_level(report: Optional[dict]) -> str:
    """"warning", "info" or "" (nothing to show): chooses the panel's icon."""
    severities = {f.get("severity") for f in quality_flags(report)}
    return "warning" if "warning" in severities else ("info" if severities else "")


def quality_html(report: Optional[dict]) -> str:
    """Rich text for the panel's quality label: one line per flag (code and message)."""
    import html

    lines = []
    for f in quality_flags(report):
        mark = "&#9888;" if f.get("severity") == "warning" else "&#8505;"
        lines.append(f"{mark} <b>{html.escape(str(f.get('code', '')))}</b>: {html.escape(str(f.get('message', '')))}")
    return "<br>".join(lines)


def fill_report_table(table_node, report: dict) -> None:
    """Replace the table's contents with the report; the full JSON goes into an attribute."""
    vtk = _vtk()
    rows = report_rows(report)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        table = table_node.GetTable()
        for c, title in enumerate(REPORT_COLUMNS):
            column = vtk.vtkStringArray()
            column.SetName(title)
            column.SetNumberOfValues(len(rows))
            for r, row in enumerate(rows):
                column.SetValue(r, row[c])
            table.AddColumn(column)
        table_node.SetUseColumnNameAsColumnHeader(True)
        table_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report, default=str))
        table_node.SetLocked(True)
        table.Modified()
    finally:
        table_node.EndModify(was_modifying)


def table_contents(table_node) -> List[List[str]]:
    """The table as rows of strings (header first)."""
    table = table_node.GetTable()
    header = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    rows = [[table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())]
    return [header] + rows


def create_or_update_report_table(scene, report: dict, table_node=None, name: str = "Liver report",
                                  volume_node=None):
    created = table_node is None
    if created:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    try:
        fill_report_table(table_node, report)
        if volume_node is not None and created:
            place_in_subject_hierarchy(table_node, volume_node)
    except Exception:
        if created:
            remove_node(scene, table_node)
        raise
    return table_node


def report_from_table(table_node) -> Optional[dict]:
    text = table_node.GetAttribute(REPORT_ATTRIBUTE) if table_node is not None else None
    return json.loads(text) if text else None


# ---------------------------------------------------------------------------------------------
# scene bookkeeping (tests, rollback)
# ---------------------------------------------------------------------------------------------
def node_ids(scene) -> List[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes (which the scene leaves behind)."""
    if node is None or scene is None:
        return
    dependents = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            dependents += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
    if scene.IsNodePresent(node):
        scene.RemoveNode(node)
    for dep in dependents:
        if dep is not None and scene.IsNodePresent(dep):
            scene.RemoveNode(dep)

