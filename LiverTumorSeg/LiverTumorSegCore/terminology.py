"""Segment names, colours and DICOM/SNOMED terminology of the module's output.

The one place the Slicer module takes them from. ``LiverTumorSegLib.terminology`` (the pure
library) holds the same definitions, but importing it runs the library's ``__init__`` (which
imports torch), and the Slicer process must not load torch just to name two segments; so the
constants are repeated here and ``Testing/test_slicer_module.py`` checks that both agree.

A terminology entry is stored on a segment as the ``TerminologyEntry`` tag: seven fields
separated by ``~`` (context name, category, type, type modifier, anatomic context name,
anatomic region, anatomic region modifier), each code written ``scheme^value^meaning``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
LIVER: Code = ("SCT", "10200004", "Liver")
MORPHOLOGICALLY_ALTERED_STRUCTURE: Code = ("SCT", "49755003", "Morphologically Altered Structure")
NEOPLASM: Code = ("SCT", "108369006", "Neoplasm")


@dataclass(frozen=True)
class SegmentDefinition:
    """One output segment: which labels of the network's label map it covers, and how it looks."""

    segment_id: str
    name: str
    labels: Tuple[int, ...]  # label values of the label map that make up this segment
    color: Tuple[float, float, float]  # RGB in 0..1
    category: Code
    type: Code
    region: Optional[Code] = None

    def terminology_entry(self) -> str:
        """The ``TerminologyEntry`` tag value (7 fields separated by ``~``)."""
        return "~".join([
            CATEGORY_CONTEXT,
            _code(self.category),
            _code(self.type),
            "^^",
            ANATOMIC_CONTEXT,
            _code(self.region),
            "^^",
        ])


def _code(code: Optional[Code]) -> str:
    return "^".join(code) if code else "^^"


#: As in the library's ``.seg.nrrd`` writer (``LiverTumorSegLib.terminology``): the segments do
#: not overlap (liver = label 1, parenchyma without the tumours; tumour = label 2) and share one
#: labelmap layer, the Segment Editor's default, which round-trips exactly to the label map. The
#: liver *region* (the report's ``liver_volume_ml``) is the union of both segments.
LIVER_SEGMENT = SegmentDefinition(
    segment_id="liver",
    name="Liver",
    labels=(1,),
    color=(221 / 255.0, 130 / 255.0, 101 / 255.0),
    category=ANATOMICAL_STRUCTURE,
    type=LIVER,
)
TUMOR_SEGMENT = SegmentDefinition(
    segment_id="liver_tumor",
    name="Liver tumor",
    labels=(2,),
    color=(144 / 255.0, 238 / 255.0, 144 / 255.0),
    category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
    type=NEOPLASM,
    region=LIVER,
)

SEGMENTS: Tuple[SegmentDefinition, ...] = (LIVER_SEGMENT, TUMOR_SEGMENT)


def parse_terminology_entry(entry: str) -> dict:
    """Split a ``TerminologyEntry`` string into its fields (codes as (scheme, value, meaning))."""
    parts = entry.split("~")
    if len(parts) != 7:
        raise ValueError(f"a terminology entry has 7 fields separated by '~', got {len(parts)}: {entry!r}")

    def code(text: str) -> Optional[Code]:
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
