"""Segment names, colours and standard terminology codes, shared by every writer.

The ``.seg.nrrd`` writer (``image_io``), the Slicer module (``LiverTumorSegCore``) and the
reports all take the segment metadata from here, so a segmentation looks the same wherever it
was made. The Slicer module imports this module inside Slicer's own process: keep it to the
standard library (no torch, numpy or SimpleITK).

Both segments use codes that 3D Slicer's "3D Slicer General Anatomy list" terminology context
(``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``, Slicer's default context)
contains, so Slicer's terminology lookup and selector find them:

* liver: category Anatomical Structure (SCT 123037004), type Liver (SCT 10200004);
* liver tumour: category Morphologically Altered Structure (SCT 49755003), type Mass
  (SCT 4147007, DICOM CID 7159 "Lesion Segmentation Types"), anatomic region Liver
  (SCT 10200004, "Anatomic codes - DICOM master list").

Type Neoplasm (SCT 108369006) is only in the "DICOM master list" context, not in the General
Anatomy list, so it is no longer written; files that use it are still read as tumour.

Colours are Slicer's generic anatomy colours: "organ" (221, 130, 101) for the liver and
"mass" (144, 238, 144) for the tumour.

Label values follow the LiTS convention used everywhere in the project: 0 background,
1 liver, 2 tumour. In a ``.seg.nrrd`` the two segments are stored NON-overlapping in one
layer (liver segment = label-1 voxels, i.e. liver parenchyma without the tumour; tumour
segment = label-2 voxels), which is how Slicer's Segment Editor works by default and which
round-trips exactly to the label map; the liver region is the union of both segments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# (coding scheme designator, code value, code meaning)
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
LIVER_CODE = ("SCT", "10200004", "Liver")
MASS_CODE = ("SCT", "4147007", "Mass")  # in the General Anatomy list (and the DICOM master list)
NEOPLASM_CODE = ("SCT", "108369006", "Neoplasm")  # DICOM master list only: read, never written


@dataclass(frozen=True)
class SegmentInfo:
    """Everything a writer needs to describe one label value as a segment."""

    label: int
    id: str
    name: str
    color_rgb255: tuple[int, int, int]
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    anatomic_region: Optional[tuple[str, str, str]] = None
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def color(self) -> tuple[float, float, float]:
        """Colour as three floats in [0, 1] (Slicer's convention)."""
        return tuple(round(c / 255.0, 6) for c in self.color_rgb255)  # type: ignore[return-value]

    @property
    def terminology(self) -> dict:
        """Terminology entry as a slicerio dict (``contextName``, ``category``, ``type``, ...)."""
        entry = {
            "contextName": SLICER_CONTEXT,
            "category": list(self.category),
            "type": list(self.type),
            "anatomicContextName": ANATOMIC_CONTEXT,
        }
        if self.anatomic_region is not None:
            entry["anatomicRegion"] = list(self.anatomic_region)
        return entry

    @property
    def terminology_string(self) -> str:
        """The 7-field ``TerminologyEntry`` tag (``~`` separated, codes ``SCT^code^meaning``)."""
        region = self.anatomic_region or ("", "", "")
        return "~".join(
            [
                SLICER_CONTEXT,
                "^".join(self.category),
                "^".join(self.type),
                "^^",
                ANATOMIC_CONTEXT,
                "^".join(region),
                "^^",
            ]
        )

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "id": self.id,
            "name": self.name,
            "color": list(self.color),
            "color_rgb255": list(self.color_rgb255),
            "terminology": self.terminology,
            "terminology_string": self.terminology_string,
        }


LIVER = SegmentInfo(
    label=1,
    id="liver",
    name="Liver",
    color_rgb255=(221, 130, 101),
    category=ANATOMICAL_STRUCTURE,
    type=LIVER_CODE,
    description="Liver parenchyma (label 1; the liver region is labels 1 and 2)",
)

LIVER_TUMOR = SegmentInfo(
    label=2,
    id="liver_tumor",
    name="Liver tumor",
    color_rgb255=(144, 238, 144),
    category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
    type=MASS_CODE,
    anatomic_region=LIVER_CODE,
    description="Liver tumour (label 2)",
)

#: Segments in label order.
SEGMENTS: tuple[SegmentInfo, ...] = (LIVER, LIVER_TUMOR)
SEGMENTS_BY_LABEL: dict[int, SegmentInfo] = {s.label: s for s in SEGMENTS}


def segment_for_label(label: int) -> Optional[SegmentInfo]:
    """The SegmentInfo of a label value (1 liver, 2 tumour), None for others."""
    return SEGMENTS_BY_LABEL.get(int(label))


def _code_matches(a, b) -> bool:
    return a is not None and b is not None and len(a) >= 2 and len(b) >= 2 and a[0] == b[0] and str(a[1]) == str(b[1])


def label_for_segment(segment: dict) -> Optional[int]:
    """Our label value for a segment dict (as slicerio reads it), or None if it is neither.

    Matches on the terminology type code first (Liver -> 1, Neoplasm/Mass/Tumor -> 2), then
    on the name ("liver" -> 1; names containing tumor/tumour/lesion/neoplasm/mass -> 2).
    """
    term = segment.get("terminology") or {}
    seg_type = term.get("type")
    if _code_matches(seg_type, LIVER_CODE):
        return LIVER.label
    tumour_types = (MASS_CODE, NEOPLASM_CODE)
    if any(_code_matches(seg_type, t) for t in tumour_types):
        return LIVER_TUMOR.label
    name = str(segment.get("name", "")).lower()
    if any(w in name for w in ("tumor", "tumour", "lesion", "neoplasm", "mass", "metasta")):
        return LIVER_TUMOR.label
    if "liver" in name or "hepar" in name:
        return LIVER.label
    return None


def parse_terminology_string(entry: str) -> dict:
    """Split a ``TerminologyEntry`` tag (as :attr:`SegmentInfo.terminology_string` writes it and
    3D Slicer stores it on a segment) into its seven fields.

    Keys: ``context``, ``category``, ``type``, ``type_modifier``, ``anatomic_context``, ``region``,
    ``region_modifier``; codes become (scheme, value, meaning) tuples, empty codes None.
    """
    parts = entry.split("~")
    if len(parts) != 7:
        raise ValueError(f"a terminology entry has 7 fields separated by '~', got {len(parts)}: {entry!r}")

    def code(text: str) -> Optional[tuple[str, str, str]]:
        fields = text.split("^")
        if len(fields) != 3 or not any(fields):
            return None
        return (fields[0], fields[1], fields[2])

    return {
        "context": parts[0],
        "category": code(parts[1]),
        "type": code(parts[2]),
        "type_modifier": code(parts[3]),
        "anatomic_context": parts[4],
        "region": code(parts[5]),
        "region_modifier": code(parts[6]),
    }
