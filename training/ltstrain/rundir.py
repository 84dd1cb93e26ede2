"""The run folder's rules: never overwrite a run by accident, never leave an empty one behind.

- An existing, non-empty run folder is refused unless the run resumes (``--resume``) or
  ``overwrite`` is given; ``overwrite`` removes the files a run writes (``RUN_FILES``) and
  leaves anything else in the folder alone.
- A run that fails (or is interrupted) before its first checkpoint removes what it wrote and
  the folders it created; after a checkpoint the folder stays, ready for ``--resume``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from LiverTumorSegLib.errors import OutputError

RUN_FILES = (
    "config.json", "split.json", "log.csv", "summary.json", "tb",
    "best.safetensors", "best.json", "last.safetensors", "last.json",
    "last.optim.safetensors", "last.optim.json",
)


class RunFolder:
    """The run folder's rules. Construct it on every rank before the process group forms
    (the refusals are read-only, so every rank refuses alike and none waits at a barrier);
    rank 0 then :meth:`claim` s the folder and, on failure, :meth:`abandon` s it."""

    def __init__(self, out: Path, resuming: bool, overwrite: bool) -> None:
        self.out = Path(out)
        self.created: Optional[Path] = None  # the topmost folder this run created
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"run folder {self.out} is a file")
        present = sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []
        self.replace = bool(present) and not resuming
        if self.replace and not overwrite:
            ours = [n for n in present if n in RUN_FILES] or present
            raise OutputError(
                f"run folder {self.out} already exists (holds {', '.join(ours[:3])}{', ...' if len(ours) > 3 else ''}); "
                f"continue it with --resume {self.out} or replace it with --overwrite"
            )

    def claim(self) -> None:
        """Rank 0: remove an overwritten run's files, create the folder (remembering which)."""
        if self.replace:
            self._remove_run_files()
        if not self.out.is_dir():
            top = self.out
            while not top.parent.exists():
                top = top.parent
            self.out.mkdir(parents=True)
            self.created = top

    def _remove_run_files(self) -> None:
        for name in RUN_FILES:
            p = self.out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def has_checkpoint(self) -> bool:
        return (self.out / "last.safetensors").is_file()

    def abandon(self) -> None:
        """After a failure: without a checkpoint, remove what the run wrote and the folders it
        created (a folder that held other files before stays, with those files)."""
        if self.has_checkpoint() or not self.out.is_dir():
            return
        self._remove_run_files()
        if self.created is None:
            return
        p = self.out
        while True:
            try:
                p.rmdir()  # only when empty
            except OSError:
                return
            if p == self.created:
                return
            p = p.parent
