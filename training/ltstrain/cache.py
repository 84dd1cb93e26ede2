"""The preprocessed-data cache: preprocess every case ONCE, keep arrays and a manifest.

Layout of a cache folder::

    CACHE/manifest.json                 what is in the cache (see below)
    CACHE/cases/<case_id>/image.npy     float32 (or float16) (D, H, W) in [0, 1], network grid
    CACHE/cases/<case_id>/label.npy     uint8 (D, H, W) labels 0/1/2 on the same grid (checked
                                        by datasets.check_pair before anything is stored)
    CACHE/cases/<case_id>/fg.npz        up to 20,000 sampled voxel indices of liver / tumour

The arrays are exactly ``preprocessing.preprocess_image(image, cfg).array`` and
``preprocessing.preprocess_label(label, prepared.grid)``, i.e. what the network sees at
inference time (float16 storage is an option that rounds by at most 5e-4, about 0.2 HU).

``manifest.json``: ``format_version``, ``preprocessing`` (``PreprocessingConfig.to_dict()``),
``dtype``, ``data_root``, ``dataset`` (a name), ``cases`` ({case_id: entry}) and ``split``
({seed, ratios, train, val, test}), ``pair_checks`` (``datasets.PairChecks.to_dict()``) and
``skipped`` ({case_id: {reason, source}}: bad pairs left out with ``--skip-bad``). Each entry holds the source paths and checksums (size +
mtime_ns, and sha256 when asked; synthetic cases: their generation parameters), the file
names, ``shape`` (D, H, W), ``spacing_zyx`` (mm), the network ``grid`` geometry, the source
geometry, ``liver_z`` / ``tumour_z`` (first and last slice index that contain the region,
inclusive, or null) and voxel counts. Re-running :func:`prepare_cache` skips every case whose
checksum, preprocessing and files are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from LiverTumorSegLib.utils.files import atomic_write, atomic_write_json, sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: pairs checked (datasets.check_pair), labels uint8 0/1/2, "skipped"
FG_SAMPLES = 20000
DEFAULT_RATIOS = (0.7, 0.1, 0.2)
DEFAULT_SPLIT_SEED = 42

# Synthetic data set defaults (synthetic.make_synthetic_ct; the anatomy is in mm and
# ``scale`` shrinks all of it, tumours included, so that small arrays hold a whole abdomen).
# With the default preprocessing (in-plane spacing x 2, 1 mm slices) a case is ~96 x 96
# in-plane and extent_z_mm slices: a size a CPU can train on.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "size_xy": 192,  # source in-plane voxels
    "spacing_xy": [0.9, 1.1],  # source in-plane spacing range (mm), uniform
    "extent_z_mm": 80.0,  # physical z extent (mm); the z voxel count follows the spacing
    "spacing_z": [1.0, 1.5, 2.0, 2.5],  # source z spacings drawn from (mm)
    "orientations": True,  # vary the direction matrix (axis flips) between cases
    "scale": 0.5,  # anatomy scale (1 = adult size)
    "n_tumours": [1, 4],
    "tumour_diameter_mm": [20.0, 60.0],  # before scaling
    "base_seed": 1000,
}

_DIRECTIONS = (
    (1, 0, 0, 0, 1, 0, 0, 0, 1),  # LPS identity (DICOM-like)
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-like (x and y flipped)
    (1, 0, 0, 0, 1, 0, 0, 0, -1),  # z running cranio-caudally reversed
    (-1, 0, 0, 0, 1, 0, 0, 0, 1),  # x flipped
)


# ----------------------------------------------------------------------------- helpers
def _safe_id(case_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(case_id)).strip("._")
    return s or "case"


def file_checksum(path: os.PathLike | str, sha256: bool = False) -> dict[str, Any]:
    """size + mtime_ns of a file (or of every file under a folder); sha256 when asked."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        listing = [(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        out: dict[str, Any] = {
            "kind": "folder",
            "n_files": len(files),
            "size": int(sum(x[1] for x in listing)),
            "listing_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest(),
        }
        if sha256:
            h = hashlib.sha256()
            for f in files:
                h.update(sha256_file(f).encode())
            out["sha256"] = h.hexdigest()
        return out
    st = p.stat()
    out = {"kind": "file", "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    if sha256:
        out["sha256"] = sha256_file(p)
    return out


def _same_checksum(old: Optional[dict], new: dict) -> bool:
    if not old:
        return False
    keys = [k for k in ("kind", "size", "mtime_ns", "listing_sha256", "n_files") if k in new]
    if any(old.get(k) != new.get(k) for k in keys):
        return False
    if "sha256" in new and "sha256" in old and old["sha256"] != new["sha256"]:
        return False
    return True


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _geometry(img) -> dict[str, Any]:
    return {
        "size_xyz": list(img.GetSize()),
        "spacing_xyz": [float(s) for s in img.GetSpacing()],
        "origin_xyz": [float(o) for o in img.GetOrigin()],
        "direction": [float(d) for d in img.GetDirection()],
    }


def _z_range(mask: np.ndarray) -> Optional[list[int]]:
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return [int(zs[0]), int(zs[-1])] if len(zs) else None


def _fg_samples(mask: np.ndarray, rng: np.random.Generator, n: int = FG_SAMPLES) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) > n:
        idx = idx[np.sort(rng.choice(len(idx), n, replace=False))]
    return idx.astype(np.int32).reshape(-1, 3)


def load_preprocessing(spec: Optional[str]):
    """A PreprocessingConfig from None (defaults), a JSON file path or an inline JSON object."""
    from LiverTumorSegLib.preprocessing import PreprocessingConfig

    if not spec:
        return PreprocessingConfig()
    if isinstance(spec, dict):
        return PreprocessingConfig.from_dict(spec)
    p = Path(spec)
    text = p.read_text() if p.is_file() else spec
    d = json.loads(text)
    if "preprocessing" in d and isinstance(d["preprocessing"], dict):
        d = d["preprocessing"]
    return PreprocessingConfig.from_dict(d)


# ----------------------------------------------------------------------------- manifest
@dataclass
class CachedCase:
    """One preprocessed case of a cache (arrays are memory-mapped on access)."""

    case_id: str
    root: Path
    entry: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.entry["shape"])  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.entry["spacing_zyx"])  # type: ignore[return-value]

    # Copy-on-write maps ("c"): the arrays are writable in memory (torch.from_numpy on a
    # read-only map warns, and validation hands the image to the inference pipeline as is)
    # while the files on disk are never changed.
    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / self.entry["image"], mmap_mode="c" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / self.entry["label"], mmap_mode="c" if mmap else None)

    def fg(self) -> dict[str, np.ndarray]:
        with np.load(self.root / self.entry["fg"]) as z:
            return {k: z[k] for k in z.files}


class Cache:
    """A prepared cache folder: manifest + cases."""

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            from LiverTumorSegLib.errors import InputError

            raise InputError(f"no cache manifest at {path}; run training/prepare.py first")
        self.manifest = json.loads(path.read_text())

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    @property
    def split(self) -> dict:
        return self.manifest.get("split") or {}

    def case(self, case_id: str) -> CachedCase:
        return CachedCase(case_id, self.root, self.manifest["cases"][case_id])

    def cases(self, subset: Optional[str] = None) -> list[CachedCase]:
        ids = self.split[subset] if subset else sorted(self.manifest["cases"])
        return [self.case(i) for i in ids]

    def summary(self) -> dict:
        sp = self.split
        return {
            "dataset": self.manifest.get("dataset", "unknown"),
            "cache": str(self.root),
            "n_cases": len(self.manifest["cases"]),
            "split": {k: sp.get(k) for k in ("seed", "ratios")},
            "n_train": len(sp.get("train", [])),
            "n_val": len(sp.get("val", [])),
            "n_test": len(sp.get("test", [])),
            "train_cases": list(sp.get("train", [])),
            "val_cases": list(sp.get("val", [])),
            "test_cases": list(sp.get("test", [])),
            "skipped_cases": sorted(self.manifest.get("skipped") or {}),  # bad pairs left out (--skip-bad)
        }


# ----------------------------------------------------------------------------- preparing
def _store_case(
    root: Path,
    case_id: str,
    image,
    label,
    cfg,
    dtype: str,
    seed: int,
) -> dict[str, Any]:
    """Preprocess one (image, label) pair and write its arrays; returns the manifest entry."""
    from LiverTumorSegLib import preprocessing

    prepared = preprocessing.preprocess_image(image, cfg)
    arr = np.asarray(prepared.array, dtype=np.float32)
    lab = np.asarray(preprocessing.preprocess_label(label, prepared.grid), dtype=np.uint8)
    if arr.shape != lab.shape:
        raise RuntimeError(f"{case_id}: image {arr.shape} and label {lab.shape} grids differ")
    folder = root / "cases" / _safe_id(case_id)
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / "image.npy", arr.astype(np.float16 if dtype == "float16" else np.float32))
    _save_npy(folder / "label.npy", lab)
    rng = np.random.default_rng(seed)
    _save_npz(folder / "fg.npz", liver=_fg_samples(lab >= 1, rng), tumor=_fg_samples(lab == 2, rng))
    grid = prepared.grid
    sp = grid.GetSpacing()
    rel = folder.relative_to(root)
    return {
        "image": str(rel / "image.npy"),
        "label": str(rel / "label.npy"),
        "fg": str(rel / "fg.npz"),
        "shape": [int(s) for s in arr.shape],
        "spacing_zyx": [float(sp[2]), float(sp[1]), float(sp[0])],
        "grid": _geometry(grid),
        "source_geometry": _geometry(image),
        "liver_z": _z_range(lab >= 1),
        "tumour_z": _z_range(lab == 2),
        "voxels": {"liver": int(np.count_nonzero(lab >= 1)), "tumor": int(np.count_nonzero(lab == 2))},
        "dtype": dtype,
    }


def _files_present(root: Path, entry: dict) -> bool:
    return all((root / entry.get(k, "\0missing")).is_file() for k in ("image", "label", "fg"))


def synthetic_params(i: int, options: Optional[dict] = None) -> dict[str, Any]:
    """Generation parameters of synthetic case ``i`` (deterministic in ``i`` and options)."""
    o = {**SYNTHETIC_DEFAULTS, **(options or {})}
    seed = int(o["base_seed"]) + i
    rng = np.random.default_rng(seed)
    lo, hi = o["spacing_xy"] if isinstance(o["spacing_xy"], (list, tuple)) else (o["spacing_xy"],) * 2
    sxy = float(np.round(rng.uniform(lo, hi), 3))
    zs = o["spacing_z"] if isinstance(o["spacing_z"], (list, tuple)) else [o["spacing_z"]]
    sz = float(zs[int(rng.integers(len(zs)))])
    nz = max(4, int(round(float(o["extent_z_mm"]) / sz)))
    direction = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))] if o["orientations"] else _DIRECTIONS[0]
    n = int(o["size_xy"])
    nt = o["n_tumours"]
    return {
        "seed": seed,
        "size": [n, n, nz],
        "spacing": [sxy, sxy, sz],
        "direction": [float(d) for d in direction],
        "scale": float(o["scale"]),
        "n_tumours": list(nt) if isinstance(nt, (list, tuple)) else int(nt),
        "tumour_diameter_mm": [float(v) for v in o["tumour_diameter_mm"]],
    }


@dataclass
class _Job:
    """One case to (maybe) prepare: its id, source description and a loader of (image, label)."""

    case_id: str
    source: dict
    load: Callable[[], tuple]

    @property
    def synthetic(self) -> bool:
        return "synthetic" in self.source


def _real_jobs(data_root, sha256: bool) -> list[_Job]:
    from LiverTumorSegLib import datasets, image_io

    jobs = []
    for case in datasets.discover_cases(data_root):
        src = {
            "image": str(case.image_path),
            "label": str(case.label_path),
            "image_checksum": file_checksum(case.image_path, sha256),
            "label_checksum": file_checksum(case.label_path, sha256),
        }
        jobs.append(_Job(str(case.case_id), src,
                         lambda case=case: (image_io.read_image(case.image_path), image_io.read_image(case.label_path))))
    return jobs


def _synthetic_job(i: int, options: Optional[dict]) -> _Job:
    params = synthetic_params(i, options)

    def _make():
        from LiverTumorSegLib import synthetic as synth

        sc = synth.make_synthetic_ct(
            size=tuple(params["size"]),
            spacing=tuple(params["spacing"]),
            direction=tuple(params["direction"]),
            seed=params["seed"],
            scale=params["scale"],
            n_tumours=tuple(params["n_tumours"]) if isinstance(params["n_tumours"], list) else params["n_tumours"],
            tumour_diameter_mm=tuple(params["tumour_diameter_mm"]),
        )
        return sc.image, sc.label

    return _Job(f"synth-{i:03d}", {"synthetic": params}, _make)


def _up_to_date(root: Path, prev: Optional[dict], job: _Job) -> bool:
    if prev is None or not _files_present(root, prev):
        return False
    old = prev.get("source", {})
    if job.synthetic:
        return old.get("synthetic") == job.source["synthetic"]
    return (_same_checksum(old.get("image_checksum"), job.source["image_checksum"])
            and _same_checksum(old.get("label_checksum"), job.source["label_checksum"]))


def _check_jobs(jobs: Sequence[_Job], checks, skip_bad: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """Read and check every real pair (``datasets.check_pair``) before anything is written.

    Returns ``{case_id: {"reason", "source"}}`` of the bad cases when ``skip_bad``; otherwise
    the first bad case raises its one-line CaseError (with the count of the others)."""
    from LiverTumorSegLib.datasets import CaseError, check_pair

    bad: dict[str, dict] = {}
    first: Optional[CaseError] = None
    for job in jobs:
        if job.synthetic:
            continue
        image, label = job.load()
        try:
            check_pair(job.case_id, image, label, checks)
        except CaseError as exc:
            first = first or exc
            bad[job.case_id] = {"reason": exc.problem, "source": job.source}
            log(("skip " if skip_bad else "bad ") + str(exc))
    if first is not None and not skip_bad:
        more = f" (and {len(bad) - 1} more bad cases)" if len(bad) > 1 else ""
        raise CaseError(first.case_id, f"{first.problem}{more}; nothing was written (--skip-bad leaves bad cases out)")
    return bad


def _prepare_jobs(root: Path, jobs: Sequence[_Job], todo_ids: set, old_cases: dict, manifest: dict, cfg, dtype: str,
                  checks, log: Callable[[str], None], progress: bool) -> list[str]:
    """Store every job in ``todo_ids`` (checked pairs only), keep the others' old entries;
    the manifest is rewritten after each case, so an interrupted run keeps what is done."""
    from LiverTumorSegLib.datasets import check_pair

    processed: list[str] = []
    iterator: Iterable = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="prepare", unit="case")
    for job in iterator:
        if job.case_id in manifest["skipped"]:
            continue
        if job.case_id not in todo_ids:
            manifest["cases"][job.case_id] = old_cases[job.case_id]
            continue
        t0 = time.perf_counter()
        image, label = job.load()
        label = label if job.synthetic else check_pair(job.case_id, image, label, checks)
        seed = int(hashlib.sha256(job.case_id.encode()).hexdigest()[:8], 16)
        entry = _store_case(root, job.case_id, image, label, cfg, dtype, seed)
        manifest["cases"][job.case_id] = {**entry, "source": job.source}
        processed.append(job.case_id)
        atomic_write_json(root / MANIFEST, manifest, overwrite=True)  # an interrupted run keeps what is done
        log(f"prepared {job.case_id} {tuple(entry['shape'])} in {time.perf_counter() - t0:.1f}s")
    return processed


def prepare_cache(
    out: os.PathLike | str,
    data_root: Optional[os.PathLike | str] = None,
    preprocessing: Any = None,
    synthetic: int = 0,
    synthetic_options: Optional[dict] = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    dtype: str = "float32",
    sha256: bool = False,
    dataset_name: Optional[str] = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    checks: Any = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Create or update a cache; returns ``{"manifest", "processed", "skipped", "bad"}``.

    Real cases come from ``datasets.discover_cases(data_root)``; every pair that needs
    preparing is checked first (``datasets.check_pair`` with ``checks``, a
    ``datasets.PairChecks``), and a bad one stops everything before anything is written
    unless ``skip_bad`` (then it is listed under ``skipped`` in the manifest, outside the
    split). ``synthetic`` adds that many ``synthetic.make_synthetic_ct`` cases (ids
    ``synth-000``...). Cases no longer in the sources are dropped from the manifest.
    """
    from LiverTumorSegLib import __version__
    from LiverTumorSegLib.datasets import PairChecks
    from LiverTumorSegLib.errors import InputError

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    checks = checks or PairChecks()
    root = Path(out)
    cfg = preprocessing if preprocessing is not None and not isinstance(preprocessing, (str, dict)) else load_preprocessing(preprocessing)
    mpath = root / MANIFEST
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_by": f"LiverTumorSegLib {__version__} training/prepare.py",
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "dataset": dataset_name or (Path(data_root).name if data_root else "synthetic"),
        "preprocessing": cfg.to_dict(),
        "dtype": dtype,
        "pair_checks": checks.to_dict(),
        "cases": {},
        "skipped": {},
        "split": {},
    }
    old = json.loads(mpath.read_text()) if mpath.is_file() else {}
    same = all(old.get(k) == manifest[k] for k in ("format_version", "preprocessing", "dtype", "pair_checks"))
    old_cases = old.get("cases", {}) if same else {}
    jobs = (_real_jobs(data_root, sha256) if data_root else []) + [_synthetic_job(i, synthetic_options) for i in range(int(synthetic))]
    ids = [j.case_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids among the sources")
    todo = [j for j in jobs if not _up_to_date(root, old_cases.get(j.case_id), j)]
    manifest["skipped"] = _check_jobs(todo, checks, skip_bad, log)
    if len(manifest["skipped"]) == len(jobs):
        raise InputError("no cases to prepare (no good labelled cases found and --synthetic 0)")
    root.mkdir(parents=True, exist_ok=True)
    processed = _prepare_jobs(root, jobs, {j.case_id for j in todo}, old_cases, manifest, cfg, dtype, checks, log, progress)
    manifest["split"] = make_split(sorted(manifest["cases"]), split_seed, ratios)
    atomic_write_json(mpath, manifest, overwrite=True)
    up = len(manifest["cases"]) - len(processed)
    log(
        f"cache {root}: {len(manifest['cases'])} cases ({len(processed)} prepared, {up} up to date, "
        f"{len(manifest['skipped'])} skipped as bad); split train/val/test = "
        f"{len(manifest['split']['train'])}/{len(manifest['split']['val'])}/{len(manifest['split']['test'])}"
    )
    return {"manifest": manifest, "processed": processed, "skipped": [j.case_id for j in jobs if j.case_id in manifest["cases"] and j.case_id not in processed],
            "bad": sorted(manifest["skipped"])}


def make_split(case_ids: Sequence[str], seed: int, ratios: Sequence[float]) -> dict[str, Any]:
    """Deterministic train/val/test split of case ids through ``datasets.split_cases``."""
    from LiverTumorSegLib import datasets

    ids = sorted(str(c) for c in case_ids)
    parts = datasets.split_cases(ids, seed=int(seed), ratios=tuple(float(r) for r in ratios))
    get = lambda xs: [str(getattr(c, "case_id", c)) for c in xs]  # noqa: E731
    train, val, test = parts["train"], parts["val"], parts["test"]
    return {"seed": int(seed), "ratios": [float(r) for r in ratios], "train": get(train), "val": get(val), "test": get(test)}

