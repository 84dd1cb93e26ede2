"""The batch manifest: what was done for each case, with what input, model and options.

One JSON file in the output folder, rewritten atomically after every finished case (so a
crash or Ctrl-C loses at most the cases in flight). A case is skipped on a rerun when its
entry is ``done`` and its input fingerprint, model sha256 and options are unchanged and its
outputs still exist; anything else is (re)done.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError
from ..utils.files import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def fingerprint(path) -> dict:
    """Identity of a case input: a file's size, mtime and sha256; for a folder (a DICOM series)
    the sha256 of its file list (relative path, size, mtime of every file)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        n = 0
        total = 0
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                fp = os.path.join(root, name)
                st = os.stat(fp)
                h.update(f"{os.path.relpath(fp, p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n += 1
                total += st.st_size
        return {"kind": "folder", "files": n, "size": total, "sha256": h.hexdigest()}
    st = p.stat()
    return {"kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}


class Manifest:
    """``{"format_version", "cases": {case_id: entry}}`` in ``out_dir/manifest.json``."""

    def __init__(self, out_dir) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.cases: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the batch manifest {self.path}: {exc}") from None
            if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
                raise ConfigError(f"{self.path} is not a batch manifest of format {FORMAT_VERSION}")
            self.cases = dict(data.get("cases") or {})

    def is_finished(self, case_id: str, fp: Mapping[str, Any], model_sha256: str, options: Mapping[str, Any]) -> bool:
        e = self.cases.get(case_id)
        if not e or e.get("status") != "done":
            return False
        if e.get("fingerprint") != dict(fp) or e.get("model_sha256") != model_sha256 or e.get("options") != dict(options):
            return False
        return all(Path(self.path.parent / rel).exists() for rel in (e.get("outputs") or {}).values())

    def record(self, case_id: str, entry: Mapping[str, Any]) -> None:
        self.cases[case_id] = json.loads(json.dumps(dict(entry), default=str))
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"format_version": FORMAT_VERSION, "cases": self.cases}, overwrite=True)

    def get(self, case_id: str) -> Optional[dict]:
        return self.cases.get(case_id)
