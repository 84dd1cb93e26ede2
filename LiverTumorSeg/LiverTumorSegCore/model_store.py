"""The model store: the models folder of imported weights files (safetensors + JSON sidecar), checked by sha256.

Offline sites import a weights file they received (USB stick, intranet): it is copied into the
models folder only when its sha256 equals the one recorded in its sidecar, so a truncated or
tampered file never gets used. The folder's location and size are shown in the module's
Advanced section, with buttons to open it and to delete models.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from LiverTumorSegLib.utils.files import atomic_write, atomic_write_bytes, sha256_file, sidecar_path  # stdlib only

from .errors import ModelError

WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_MODEL = "default"  # the library's bundled model


def read_sidecar(path: Union[str, Path]) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise ModelError(f"The sidecar {side.name} (model configuration and checksum) is missing next to "
                         f"{Path(path).name}.")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"The sidecar {side.name} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"The sidecar {side.name} is not a JSON object.")
    if not isinstance(meta.get("sha256"), str) or len(meta["sha256"]) != 64:
        raise ModelError(f"The sidecar {side.name} has no sha256 checksum of the weights.")
    return meta


def verify_weights(path: Union[str, Path]) -> dict:
    """Check that ``path`` is a safetensors file whose sha256 matches its sidecar; return the sidecar."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model weights file not found: {path}")
    if path.suffix.lower() != WEIGHTS_SUFFIX:
        raise ModelError(f"{path.name} is not a .safetensors weights file.")
    meta = read_sidecar(path)
    digest = sha256_file(path)
    if digest != meta["sha256"].lower():
        raise ModelError(f"Checksum mismatch for {path.name}: the file is not the one its sidecar describes "
                         f"(sha256 {digest[:12]}... vs {meta['sha256'][:12]}...). It may be truncated or altered.")
    return meta


@dataclass
class ModelInfo:
    name: str  # file stem, unique in the folder
    path: Path
    title: str
    version: str
    sha256: str
    size_bytes: int

    @property
    def label(self) -> str:
        return f"{self.title} ({self.version})" if self.version else self.title


class ModelStore:
    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder)

    def models(self) -> List[ModelInfo]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob(f"*{WEIGHTS_SUFFIX}")):
            try:
                meta = read_sidecar(path)
            except ModelError:
                continue
            size = path.stat().st_size + sidecar_path(path).stat().st_size
            out.append(ModelInfo(name=path.stem, path=path, title=str(meta.get("title") or meta.get("name") or path.stem),
                                 version=str(meta.get("version") or ""), sha256=meta["sha256"], size_bytes=size))
        return out

    def find(self, name: str) -> Optional[ModelInfo]:
        for m in self.models():
            if m.name == name or str(m.path) == str(name):
                return m
        return None

    def import_weights(self, source: Union[str, Path]) -> ModelInfo:
        """Copy a verified weights file and its sidecar into the folder (atomically)."""
        source = Path(source)
        meta = verify_weights(source)
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / source.name
        if target.exists():
            if sha256_file(target) == meta["sha256"].lower():
                info = self.find(target.stem)
                if info is not None:
                    return info  # the same model is already there
            raise ModelError(f"A different model named {target.name} is already in the models folder; "
                             "rename the file or delete the existing model first.")
        with atomic_write(target, overwrite=False) as tmp_weights:
            shutil.copyfile(source, tmp_weights)
            if sha256_file(tmp_weights) != meta["sha256"].lower():
                raise ModelError(f"Copying {source.name} into the models folder corrupted it; check the disk.")
            # the sidecar first, so that a listed weights file always has its sidecar
            atomic_write_bytes(sidecar_path(target), sidecar_path(source).read_bytes(), overwrite=True)
        info = self.find(target.stem)
        assert info is not None
        return info

    def delete(self, name: str) -> None:
        info = self.find(name)
        if info is None:
            raise ModelError(f"No model named {name} in {self.folder}.")
        info.path.unlink()
        side = sidecar_path(info.path)
        if side.exists():
            side.unlink()

    def size_bytes(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    return f"{size:.1f} GB"
