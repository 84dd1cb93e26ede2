"""The preprocessed-data cache: preprocess every case ONCE, keep arrays and a manifest.

Layout of a cache folder::

    CACHE/manifest.json                 what is in the cache (see below)
    CACHE/cases/<case_id>/image.npy     float32 (or float16) (D, H, W) in [0, 1], network grid
    CACHE/cases/<case_id>/label.npy     uint8 (D, H, W) labels 0/1/2 on the same grid
    CACHE/cases/<case_id>/fg.npz        up to 20,000 sampled voxel indices of liver / tumour

The arrays are exactly ``preprocessing.preprocess_image(image, cfg).array`` and
``preprocessing.preprocess_label(label, prepared.grid)``, i.e. what the network sees at
inference time (float16 storage is an option that rounds by at most 5e-4, about 0.2 HU).

``manifest.json``: ``format_version``, ``preprocessing`` (``PreprocessingConfig.to_dict()``),
``dtype``, ``data_root``, ``dataset`` (a name), ``cases`` ({case_id: entry}) and ``split``
({seed, ratios, train, val, test}). Each entry holds the source paths and checksums (size +
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

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
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
                h.update(_sha256_file(f).encode())
            out["sha256"] = h.hexdigest()
        return out
    st = p.stat()
    out = {"kind": "file", "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    if sha256:
        out["sha256"] = _sha256_file(p)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_checksum(old: Optional[dict], new: dict) -> bool:
    if not old:
        return False
    keys = [k for k in ("kind", "size", "mtime_ns", "listing_sha256", "n_files") if k in new]
    if any(old.get(k) != new.get(k) for k in keys):
        return False
    if "sha256" in new and "sha256" in old and old["sha256"] != new["sha256"]:
        return False
    return True


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def write_json_atomic(path: os.PathLike | str, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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

    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / self.entry["image"], mmap_mode="r" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / self.entry["label"], mmap_mode="r" if mmap else None)

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
    _atomic_save_npy(folder / "image.npy", arr.astype(np.float16 if dtype == "float16" else np.float32))
    _atomic_save_npy(folder / "label.npy", lab)
    rng = np.random.default_rng(seed)
    _atomic_save_npz(folder / "fg.npz", liver=_fg_samples(lab >= 1, rng), tumor=_fg_samples(lab == 2, rng))
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
) -> dict[str, Any]:
    """Create or update a cache; returns ``{"manifest", "processed", "skipped"}``.

    Real cases come from ``datasets.discover_cases(data_root)``; ``synthetic`` adds that many
    ``synthetic.make_synthetic_ct`` cases (ids ``synth-000``...). Cases present in an older
    manifest but no longer in the sources are dropped from the manifest (their files stay).
    """
    from LiverTumorSegLib import __version__

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = preprocessing if preprocessing is not None and not isinstance(preprocessing, (str, dict)) else load_preprocessing(preprocessing)
    cfg_dict = cfg.to_dict()
    mpath = root / MANIFEST
    old = json.loads(mpath.read_text()) if mpath.is_file() else {}
    old_cases = old.get("cases", {}) if old.get("preprocessing") == cfg_dict and old.get("dtype") == dtype else {}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_by": f"LiverTumorSegLib {__version__} training/prepare.py",
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "dataset": dataset_name or (Path(data_root).name if data_root else "synthetic"),
        "preprocessing": cfg_dict,
        "dtype": dtype,
        "cases": {},
        "split": {},
    }
    processed: list[str] = []
    skipped: list[str] = []

    jobs: list[tuple[str, dict, Callable[[], tuple]]] = []
    if data_root:
        from LiverTumorSegLib import datasets, image_io

        for case in datasets.discover_cases(data_root):
            src = {
                "image": str(case.image_path),
                "label": str(case.label_path) if case.label_path else None,
                "image_checksum": file_checksum(case.image_path, sha256),
                "label_checksum": file_checksum(case.label_path, sha256) if case.label_path else None,
            }
            if case.label_path is None:
                log(f"skip {case.case_id}: no label")
                continue

            def _load(case=case):
                return image_io.read_image(case.image_path), image_io.read_image(case.label_path)

            jobs.append((str(case.case_id), src, _load))
    for i in range(int(synthetic)):
        params = synthetic_params(i, synthetic_options)
        src = {"synthetic": params}

        def _make(params=params):
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

        jobs.append((f"synth-{i:03d}", src, _make))

    ids = [j[0] for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids among the sources")
    iterator: Iterable = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="prepare", unit="case")
    for n, (case_id, src, loader) in enumerate(iterator):
        prev = old_cases.get(case_id)
        up_to_date = (
            prev is not None
            and _files_present(root, prev)
            and (
                prev.get("source", {}).get("synthetic") == src.get("synthetic")
                if "synthetic" in src
                else (
                    _same_checksum(prev.get("source", {}).get("image_checksum"), src["image_checksum"])
                    and _same_checksum(prev.get("source", {}).get("label_checksum"), src["label_checksum"])
                )
            )
        )
        if up_to_date:
            manifest["cases"][case_id] = prev
            skipped.append(case_id)
            continue
        t0 = time.perf_counter()
        image, label = loader()
        seed = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)
        entry = _store_case(root, case_id, image, label, cfg, dtype, seed)
        entry["source"] = src
        manifest["cases"][case_id] = entry
        processed.append(case_id)
        write_json_atomic(mpath, manifest)  # an interrupted run keeps what is done
        log(f"prepared {case_id} {tuple(entry['shape'])} in {time.perf_counter() - t0:.1f}s")

    if not manifest["cases"]:
        from LiverTumorSegLib.errors import InputError

        raise InputError("no cases to prepare (no labelled cases found and --synthetic 0)")
    manifest["split"] = make_split(sorted(manifest["cases"]), split_seed, ratios)
    write_json_atomic(mpath, manifest)
    log(
        f"cache {root}: {len(manifest['cases'])} cases ({len(processed)} prepared, {len(skipped)} up to date); "
        f"split train/val/test = {len(manifest['split']['train'])}/{len(manifest['split']['val'])}/{len(manifest['split']['test'])}"
    )
    return {"manifest": manifest, "processed": processed, "skipped": skipped}


def make_split(case_ids: Sequence[str], seed: int, ratios: Sequence[float]) -> dict[str, Any]:
    """Deterministic train/val/test split of case ids through ``datasets.split_cases``."""
    from LiverTumorSegLib import datasets

    ids = sorted(str(c) for c in case_ids)
    parts = datasets.split_cases(ids, seed=int(seed), ratios=tuple(float(r) for r in ratios))
    get = lambda xs: [str(getattr(c, "case_id", c)) for c in xs]  # noqa: E731
    train, val, test = parts["train"], parts["val"], parts["test"]
    return {"seed": int(seed), "ratios": [float(r) for r in ratios], "train": get(train), "val": get(val), "test": get(test)}

