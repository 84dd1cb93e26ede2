"""What the cases of a batch are: files and DICOM series in a folder, or rows of a CSV."""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError

#: Case ids become folder names: keep them to a safe alphabet.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    case_id: str
    path: str  # an image file, a DICOM folder or a DICOM file
    series_uid: Optional[str] = None

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "path": self.path, "series_uid": self.series_uid}


def safe_id(text: str) -> str:
    s = _UNSAFE.sub("_", text).strip("._")
    return s or "case"


def _image_stem(name: str) -> Optional[str]:
    from ..image_io import IMAGE_EXTENSIONS

    low = name.lower()
    for e in IMAGE_EXTENSIONS:
        if low.endswith(e) and len(low) > len(e):
            return name[: -len(e)]
    return None


def _has_dicom(folder: Path) -> bool:
    from ..dicom import is_dicom_file

    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and is_dicom_file(os.path.join(root, f)):
                return True
    return False


def _from_folder(folder: Path) -> list[Case]:
    """Each image file directly in ``folder`` is a case (id: its name without extension); each
    sub-folder holding DICOM files is a case (id: the sub-folder name; the reader takes its CT
    series with most slices); DICOM files lying directly in ``folder`` form one case per series."""
    from ..dicom import is_dicom_file, scan_folder

    cases: list[Case] = []
    loose_dicom = False
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        p = Path(entry.path)
        if entry.is_dir():
            if _has_dicom(p):
                cases.append(Case(safe_id(entry.name), str(p)))
        elif entry.is_file():
            stem = _image_stem(entry.name)
            if stem is not None:
                cases.append(Case(safe_id(stem), str(p)))
            elif is_dicom_file(p):
                loose_dicom = True
    if loose_dicom:
        series, _ = scan_folder(folder, recursive=False)
        for s in series:
            cases.append(Case(safe_id(f"series_{s.series_number if s.series_number is not None else ''}_{s.uid[-12:]}"),
                              str(folder), s.uid or None))
    return cases


def _from_csv(path: Path) -> list[Case]:
    """Columns ``case_id`` and ``path`` (header required; optional ``series_uid``); relative
    paths are relative to the CSV's folder."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "case_id" not in fields or "path" not in fields:
                raise InputError(f"{path}: the case list needs a header with columns case_id and path, got {fields}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the case list {path}: {exc}") from None
    cases = []
    for n, row in enumerate(rows, start=2):
        if not row.get("case_id") or not row.get("path"):
            raise InputError(f"{path} line {n}: case_id and path must not be empty")
        p = Path(row["path"]).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        cases.append(Case(safe_id(row["case_id"]), str(p), row.get("series_uid") or None))
    return cases


def discover_cases(input_path) -> list[Case]:
    """The cases of a batch input (folder or ``.csv``); InputError if none or ids repeat."""
    p = Path(input_path).expanduser()
    if not p.exists():
        raise InputError(f"batch input not found: {p}")
    if p.is_dir():
        cases = _from_folder(p)
    elif p.suffix.lower() == ".csv":
        cases = _from_csv(p)
    else:
        raise InputError(f"batch input must be a folder or a .csv case list: {p}")
    if not cases:
        raise InputError(f"no cases found in {p} (image files, DICOM sub-folders or a CSV of case_id,path)")
    seen: dict[str, str] = {}
    for c in cases:
        if c.case_id in seen:
            raise InputError(f"case id {c.case_id!r} is used twice ({seen[c.case_id]} and {c.path}); ids must be unique")
        seen[c.case_id] = c.path
    return cases
