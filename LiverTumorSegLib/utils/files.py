"""Files written so that nothing the user had is lost: checks first, atomic writes, checksums.

Every output of the project (label maps, reports, weights, sidecars, manifests, logs of
record) goes through :func:`atomic_write`: data are written to a hidden temporary file in the
destination folder and renamed into place, so a failure or a cancel never leaves a partial
file, and an existing file is never touched unless ``overwrite=True``.

Torch-free and SimpleITK-free on purpose: the Slicer module imports it in Slicer's own process.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from ..errors import OutputError

PathLike = Union[str, os.PathLike]

#: Multi-part extensions kept whole on temporary files, so format-by-extension writers work.
_MULTI_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".tar.gz")

__all__ = [
    "sha256_file",
    "sha256_bytes",
    "sidecar_path",
    "full_extension",
    "check_output_path",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
]


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar_path(path: PathLike) -> Path:
    """``x.safetensors`` -> ``x.json`` (same folder, same stem): a weights file's metadata."""
    return Path(path).with_suffix(".json")


def full_extension(path: PathLike) -> str:
    """The file's extension, keeping ``.nii.gz``/``.seg.nrrd`` whole, lower case."""
    name = Path(path).name.lower()
    for e in _MULTI_EXTENSIONS:
        if name.endswith(e) and len(name) > len(e):
            return e
    return Path(name).suffix


def check_output_path(path: PathLike, overwrite: bool = False, create_folder: bool = True,
                      what: str = "output file", hint: str = "allow overwriting to replace it") -> Path:
    """Check early that ``path`` can be written (before a long computation); returns it.

    OutputError if it is a folder, if it exists and ``overwrite`` is False (the message ends
    with ``hint``, e.g. the command line's flag), or if its folder cannot be written. With
    ``create_folder`` a missing folder is created now; without, nothing is created. Then the
    folder (or its nearest existing ancestor) must accept new files: probed with a temporary
    file, since permission bits say nothing for root or read-only mounts. ``what`` names
    the file in messages ("report", "output").
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; give a file name")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise OutputError(f"{what} already exists: {p} ({hint})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise OutputError(f"cannot write {p}: {parent} is not a folder")
        if create_folder:
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the output folder {parent}: {exc.strerror or exc}") from None
    _probe_writable(p)
    return p


def _probe_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we can create files in."""
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {path}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".livertumorseg-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {path}: folder {probe} is not writable ({exc.strerror or exc})") from None


def _default_mode() -> int:
    """0o666 minus the process umask (what a plain ``open()`` would give; mkstemp gives 0600)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _commit(tmp: Path, dest: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dest)
        return
    # no-clobber: a hard link fails atomically if dest exists (no race with another writer)
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputError(f"output file already exists: {dest} (allow overwriting to replace it)") from None
    except OSError:  # file system without hard links: check, then rename
        if dest.exists() or dest.is_symlink():
            raise OutputError(f"output file already exists: {dest} (allow overwriting to replace it)") from None
        os.replace(tmp, dest)
        return
    tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Context manager for writing ``path`` atomically; yields a temporary path to write to.

    The temporary file lies in the destination folder (hidden name, same extension) and is
    renamed onto ``path`` when the block ends without error; on any error (or KeyboardInterrupt)
    it is removed and ``path`` is untouched. An existing ``path`` raises OutputError (before
    and, race-free, at the rename) unless ``overwrite``. OSErrors while writing (disk full,
    permission) become OutputError::

        with atomic_write("report.json", overwrite=False) as tmp:
            tmp.write_text(text)
    """
    dest = check_output_path(path, overwrite)
    suffix = full_extension(dest)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to the folder {dest.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError(f"nothing was written for {dest}")
            os.chmod(tmp, _default_mode())
            _commit(tmp, dest, overwrite)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutputError(f"cannot write {dest}: no space left on the device") from None
            raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_bytes(path: PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, overwrite) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(path: PathLike, obj: Any, overwrite: bool = False, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", overwrite)
