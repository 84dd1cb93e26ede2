"""Finding image/label pairs in a data folder, and a reproducible train/val/test split.

Layouts recognised by :func:`discover_cases` (tried in this order):

1. Medical Segmentation Decathlon (Task03_Liver): ``imagesTr/liver_N.nii.gz`` with
   ``labelsTr/liver_N.nii.gz``, the ``imagesTr`` folder being ``root`` itself, directly
   below it or anywhere beneath it. ``imagesTs`` (no labels) is ignored. Case id: ``liver_N``.
2. LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]``, anywhere below ``root``
   (the two may sit in different subfolders, e.g. the "Training Batch" folders). Case id:
   ``volume-N``.
3. Plain pairs, either files ``NAME_<image>.<ext>`` + ``NAME_<label>.<ext>`` in one folder or
   folders ``CASE/<image>.<ext>`` + ``CASE/<label>.<ext>`` (as in ``../shared/data``), with
   ``<image>`` one of ct, image, img, volume and ``<label>`` one of label, labels, seg,
   segmentation, mask. Case id: ``NAME`` or the folder name (relative to ``root`` when
   nested). Other files (e.g. ``totalseg_multilabel.nii.gz``) are ignored.

File extensions: .nii, .nii.gz, .nrrd, .mha, .mhd. Hidden files (names starting with ".",
including macOS ``._`` resource forks) are ignored everywhere. Cases are returned in natural
order of their ids (``volume-2`` before ``volume-10``). A folder without recognisable cases,
an image without its label (or a label without its image) and two cases with the same id
raise :class:`~LiverTumorSegLib.errors.InputError`.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

from .errors import InputError

EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_KEYS = ("ct", "image", "img", "volume")
LABEL_KEYS = ("label", "labels", "seg", "segmentation", "mask")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Case:
    """One image and its reference label map."""

    case_id: str
    image_path: Path
    label_path: Path

    def to_dict(self) -> Dict[str, str]:
        return {"case_id": self.case_id, "image_path": str(self.image_path), "label_path": str(self.label_path)}


def natural_key(text: str) -> Tuple:
    """Sort key ordering embedded numbers by value: ``a2`` < ``a10``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(text)) if t)


def _split_ext(name: str) -> Optional[Tuple[str, str]]:
    """``(stem, ext)`` for a supported image file name, else None."""
    low = name.lower()
    for ext in EXTENSIONS:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def _visible_files(folder: Path, recursive: bool) -> List[Path]:
    out: List[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    else:
        out = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [p for p in out if _split_ext(p.name)]


def _pair(images: Dict[str, Path], labels: Dict[str, Path], layout: str) -> List[Case]:
    missing = sorted(set(images) - set(labels), key=natural_key)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{layout} case {missing[0]} has no label file: {images[missing[0]]}{more}")
    orphan = sorted(set(labels) - set(images), key=natural_key)
    if orphan:
        more = f" (and {len(orphan) - 1} more)" if len(orphan) > 1 else ""
        raise InputError(f"{layout} case {orphan[0]} has a label but no image: {labels[orphan[0]]}{more}")
    return [Case(cid, images[cid], labels[cid]) for cid in sorted(images, key=natural_key)]


def _put(table: Dict[str, Path], key: str, path: Path) -> None:
    if key in table and table[key] != path:
        raise InputError(f"case {key} appears twice: {table[key]} and {path}")
    table[key] = path


def _discover_msd(root: Path) -> Optional[List[Case]]:
    candidates = [root] if root.name == "imagesTr" else []
    candidates += [root / "imagesTr"] if (root / "imagesTr").is_dir() else []
    if not candidates:
        candidates = sorted(p for p in root.rglob("imagesTr") if p.is_dir() and not any(s.startswith(".") for s in p.parts))
    if not candidates:
        return None
    cases: List[Case] = []
    for images_dir in candidates:
        labels_dir = images_dir.parent / "labelsTr"
        images: Dict[str, Path] = {}
        labels: Dict[str, Path] = {}
        for p in _visible_files(images_dir, recursive=False):
            stem = _split_ext(p.name)[0]
            # nnU-Net style liver_001_0000.nii.gz: the channel suffix is not part of the id
            stem = re.sub(r"_0000$", "", stem)
            _put(images, stem, p)
        if images and not labels_dir.is_dir():
            raise InputError(f"Decathlon layout: {images_dir} has no sibling labelsTr folder")
        if labels_dir.is_dir():
            for p in _visible_files(labels_dir, recursive=False):
                _put(labels, _split_ext(p.name)[0], p)
        cases += _pair(images, labels, "Decathlon")
    return cases


_LITS = re.compile(r"^(volume|segmentation)-(\d+)$", re.IGNORECASE)


def _discover_lits(files: Sequence[Path]) -> Optional[List[Case]]:
    images: Dict[str, Path] = {}
    labels: Dict[str, Path] = {}
    for p in files:
        m = _LITS.match(_split_ext(p.name)[0])
        if m:
            key = f"volume-{int(m.group(2))}"
            _put(images if m.group(1).lower() == "volume" else labels, key, p)
    if not images and not labels:
        return None
    return _pair(images, labels, "LiTS")


def _role(stem: str) -> Optional[str]:
    s = stem.lower()
    if s in IMAGE_KEYS:
        return "image"
    if s in LABEL_KEYS:
        return "label"
    return None


def _discover_plain(root: Path, files: Sequence[Path]) -> Optional[List[Case]]:
    images: Dict[str, Path] = {}
    labels: Dict[str, Path] = {}
    suffix = re.compile(r"^(.+?)[_\-.](" + "|".join(IMAGE_KEYS + LABEL_KEYS) + r")$", re.IGNORECASE)
    for p in files:
        stem = _split_ext(p.name)[0]
        role = _role(stem)
        if role is not None:  # CASE/ct.nii.gz, CASE/label.nii.gz
            if p.parent == root:
                key = root.resolve().name or "case"
            else:
                key = p.parent.relative_to(root).as_posix()
        else:
            m = suffix.match(stem)
            if not m:
                continue
            role = _role(m.group(2))
            rel_parent = p.parent.relative_to(root).as_posix()
            key = m.group(1) if rel_parent == "." else f"{rel_parent}/{m.group(1)}"
        _put(images if role == "image" else labels, key, p)
    if not images and not labels:
        return None
    return _pair(images, labels, "image/label")


def discover_cases(root: Union[str, os.PathLike]) -> List[Case]:
    """All image/label pairs under ``root`` (see the module docstring for the layouts)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"data folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"not a folder: {root}")
    for finder in (
        lambda: _discover_msd(root),
        lambda: _discover_lits(_visible_files(root, recursive=True)),
        lambda: _discover_plain(root, _visible_files(root, recursive=True)),
    ):
        cases = finder()
        if cases:
            return cases
    raise InputError(
        f"no image/label pairs found in {root} (expected LiTS volume-N/segmentation-N, Decathlon "
        "imagesTr/labelsTr, or NAME_ct/NAME_label files or CASE/ct + CASE/label folders)"
    )


T = TypeVar("T")


def _case_key(item: object) -> str:
    return str(getattr(item, "case_id", item))


def split_counts(n: int, ratios: Sequence[float]) -> List[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), then give each split with a
    non-zero ratio at least one item when ``n`` allows it (taken from the largest split)."""
    r = [float(x) for x in ratios]
    if not r or any(x < 0 or x != x for x in r) or sum(r) <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {tuple(ratios)}")
    total = sum(r)
    exact = [n * x / total for x in r]
    counts = [int(e) for e in exact]
    order = sorted(range(len(r)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(len(r)) if r[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(r)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_cases(
    cases: Iterable[T], seed: int = 42, ratios: Sequence[float] = (0.7, 0.1, 0.2)
) -> Dict[str, List[T]]:
    """``{"train": [...], "val": [...], "test": [...]}``, every case exactly once.

    Deterministic for a seed and independent of the input order: cases are ranked by
    SHA-256 of ``"{seed}:{case_id}"`` (so adding a case never moves the others relative to
    each other), the first ``n_test`` go to test, the next ``n_val`` to val, the rest to
    train; counts from :func:`split_counts`. Each split is returned in natural id order.
    Items may be :class:`Case` objects or plain id strings.
    """
    items = list(cases)
    if len(ratios) != 3:
        raise ValueError("ratios must be (train, val, test)")
    keys = [_case_key(c) for c in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1}, key=natural_key)[0]
        raise InputError(f"case {dup} appears more than once")
    n_train, n_val, n_test = split_counts(len(items), ratios)
    ranked = sorted(
        items, key=lambda c: (hashlib.sha256(f"{seed}:{_case_key(c)}".encode()).hexdigest(), _case_key(c))
    )
    parts = {
        "test": ranked[:n_test],
        "val": ranked[n_test : n_test + n_val],
        "train": ranked[n_test + n_val :],
    }
    return {name: sorted(parts[name], key=lambda c: natural_key(_case_key(c))) for name in SPLITS}


# ============================================================================ pair checks
GRID_TOL = 1e-3  # same grid: origin within 1e-3 mm, spacing within 1e-3 relative, direction cosines within 1e-3
# what --resample-labels accepts beyond GRID_TOL (same size always): a slightly different
# header of the same scan, never another scan or crop
RESAMPLE_SPACING_TOL = 0.01  # relative
RESAMPLE_ORIGIN_TOL = 0.5  # voxels (of the image's spacing)
RESAMPLE_DIRECTION_TOL = 0.01  # direction cosines
LABELS = (0, 1, 2)


class CaseError(InputError):
    """A bad image/label pair: the message names the case and the problem."""

    def __init__(self, case_id: str, problem: str) -> None:
        super().__init__(f"case {case_id}: {problem}")
        self.case_id = case_id
        self.problem = problem


@dataclass(frozen=True)
class PairChecks:
    """How :func:`check_pair` treats a pair (``--resample-labels``, ``--label-map``)."""

    resample_labels: bool = False
    label_map: Tuple[Tuple[int, int], ...] = ()  # (from, to) pairs applied before the 0/1/2 check

    def to_dict(self) -> Dict[str, object]:
        return {"resample_labels": self.resample_labels, "label_map": {str(a): b for a, b in self.label_map}}


def parse_label_map(items: Optional[Sequence[str]]) -> Tuple[Tuple[int, int], ...]:
    """``["3:2", "4:0"]`` -> ((3, 2), (4, 0)); targets must be 0, 1 or 2 (ConfigError)."""
    from .errors import ConfigError

    out: Dict[int, int] = {}
    for item in items or []:
        for part in str(item).replace(",", " ").split():
            m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(\d+)\s*", part)
            if not m:
                raise ConfigError(f"--label-map expects FROM:TO pairs of integers (e.g. 3:2), got {part!r}")
            src, dst = int(m.group(1)), int(m.group(2))
            if dst not in LABELS:
                raise ConfigError(f"--label-map {part}: the target must be 0 (background), 1 (liver) or 2 (tumour)")
            out[src] = dst
    return tuple(sorted(out.items()))


def grid_difference(image, label, spacing_tol: float = GRID_TOL, origin_tol_vox: Optional[float] = None,
                    direction_tol: float = GRID_TOL) -> Optional[str]:
    """None when ``label`` lies on ``image``'s grid within the tolerances, else what differs
    (size first). Origin tolerance: ``GRID_TOL`` mm, or ``origin_tol_vox`` voxels when given."""
    import numpy as np

    si, sl = tuple(int(s) for s in image.GetSize()), tuple(int(s) for s in label.GetSize())
    if si != sl:
        return f"label size {sl} differs from image size {si}"
    a, b = np.array(image.GetSpacing()), np.array(label.GetSpacing())
    if np.any(np.abs(a - b) > spacing_tol * np.maximum(a, b)):
        return f"label spacing {tuple(np.round(b, 4).tolist())} differs from image spacing {tuple(np.round(a, 4).tolist())}"
    oa, ob = np.array(image.GetOrigin()), np.array(label.GetOrigin())
    tol = GRID_TOL if origin_tol_vox is None else origin_tol_vox * float(np.min(a))
    if np.any(np.abs(oa - ob) > tol):
        return f"label origin {tuple(np.round(ob, 3).tolist())} differs from image origin {tuple(np.round(oa, 3).tolist())}"
    da, db = np.array(image.GetDirection()), np.array(label.GetDirection())
    if np.any(np.abs(da - db) > direction_tol):
        return f"label direction {tuple(np.round(db, 3).tolist())} differs from image direction {tuple(np.round(da, 3).tolist())}"
    return None


def check_pair(case_id: str, image, label, checks: PairChecks = PairChecks()):
    """The reference label of a training/evaluation pair, checked and ready: a uint8 0/1/2
    SimpleITK image on exactly ``image``'s grid. Raises :class:`CaseError` (one line) when:

    - the image does not look like CT (``image_io.validate_ct``);
    - the label is not a 3D single-component map, or its size differs (never repaired);
    - its spacing, origin or direction differ by more than ``GRID_TOL`` (with
      ``checks.resample_labels``: by more than ``RESAMPLE_*_TOL``; within those it is
      resampled, nearest neighbour, onto the image grid);
    - it has non-integer values, or values outside 0/1/2 after ``checks.label_map``.
    Within ``GRID_TOL`` the image's geometry is copied onto the label.
    """
    import numpy as np
    import SimpleITK as sitk

    from .image_io import validate_ct

    try:
        validate_ct(image)
    except InputError as exc:
        raise CaseError(case_id, f"image: {exc}") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(case_id, "label must be a 3D single-component label map")
    diff = grid_difference(image, label)
    if diff and checks.resample_labels and not diff.startswith("label size"):
        loose = grid_difference(image, label, RESAMPLE_SPACING_TOL, RESAMPLE_ORIGIN_TOL, RESAMPLE_DIRECTION_TOL)
        if loose is None:
            label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
            diff = None
        else:
            diff = loose + " (beyond what --resample-labels repairs)"
    if diff:
        hint = "" if diff.startswith("label size") or checks.resample_labels else \
            " (--resample-labels resamples a label whose header differs slightly)"
        raise CaseError(case_id, diff + hint)
    arr = sitk.GetArrayFromImage(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(np.rint(arr), arr):
            raise CaseError(case_id, "label has non-integer values; expected labels 0, 1, 2")
        arr = np.rint(arr)
    arr = arr.astype(np.int64)
    if checks.label_map:
        mapped = arr.copy()
        for src, dst in checks.label_map:
            mapped[arr == src] = dst
        arr = mapped
    bad = sorted(set(np.unique(arr).tolist()) - set(LABELS))
    if bad:
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise CaseError(case_id, f"label has values {shown} outside 0 (background), 1 (liver), 2 (tumour) "
                                 f"(map them with --label-map, e.g. --label-map {bad[0]}:2)")
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(image)
    return out
