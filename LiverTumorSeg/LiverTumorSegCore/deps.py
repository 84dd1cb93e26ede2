"""Python dependencies of the module, checked without importing them (no Qt, no Slicer).

torch comes from the PyTorch extension (``PyTorchUtils``), never from ``pip install torch``.
The other packages are listed in ``Resources/requirements.txt``; packages that Slicer bundles
(numpy, SimpleITK, vtk, ...) must never be replaced by pip, so they are filtered out of any
install request and pinned through a constraints file. scipy is bundled with Slicer too
(``Slicer_USE_SCIPY``, on by default; imported at start-up, its files locked on Windows): it is
installed only where a custom Slicer build lacks it, never upgraded, and pinned like numpy.
torch (chosen by the PyTorch extension for the GPU driver) is pinned as well, so that pip
cannot swap it while resolving another package.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

# Packages Slicer ships (or that come from another extension): never installed or upgraded here.
PROTECTED = ("numpy", "simpleitk", "vtk", "torch", "torchvision", "torchaudio", "pythonqt", "ctk", "qt",
             "slicer", "slicer-core", "itk")

# Bundled with Slicer but listed in requirements.txt for custom builds without it: installed
# only when missing, never upgraded.
NO_UPGRADE = ("scipy",)
# Installed versions pinned (pip constraints) in every install or upgrade.
CONSTRAINED = ("numpy", "SimpleITK", "scipy", "torch", "torchvision", "torchaudio")
TORCH_REQUIREMENT = ">=2.2"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    m = _NAME.match(requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return m.group(1)


def read_requirements(path: Union[str, Path]) -> List[str]:
    """Requirement lines of a requirements file (comments, blanks and pip options dropped)."""
    out = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        out.append(line)
    return out


def split_protected(requirements: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(installable, skipped): requirements on protected packages are skipped."""
    keep, skipped = [], []
    protected = {canonical(p) for p in PROTECTED}
    for r in requirements:
        (skipped if canonical(requirement_name(r)) in protected else keep).append(r)
    return keep, skipped


def installed_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: str) -> bool:
    """Installed in a version the specifier accepts (specifier ignored without ``packaging``)."""
    name = requirement_name(requirement)
    version = installed_version(name)
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:
        return True
    try:
        req = Requirement(requirement)
        return req.specifier.contains(Version(version), prereleases=True)
    except Exception:
        return True


def missing_requirements(requirements: Sequence[str]) -> List[str]:
    return [r for r in requirements if not is_satisfied(r)]


def versions(names: Sequence[str]) -> Dict[str, Optional[str]]:
    return {n: installed_version(n) for n in names}


def pip_plan(requirements: Sequence[str], upgrade: bool = False) -> Dict[str, List[str]]:
    """What pip may do with ``requirements``: ``{"install", "upgrade", "kept", "skipped"}``.

    install: not satisfied now (missing or too old), installed without ``--upgrade``;
    upgrade: satisfied, upgraded only when ``upgrade`` (never a NO_UPGRADE package);
    kept: NO_UPGRADE packages already installed (left alone even if older than asked);
    skipped: protected packages (never through pip).
    """
    keep, skipped = split_protected(requirements)
    no_upgrade = {canonical(n) for n in NO_UPGRADE}
    plan: Dict[str, List[str]] = {"install": [], "upgrade": [], "kept": [], "skipped": list(skipped)}
    for r in keep:
        name = requirement_name(r)
        if canonical(name) in no_upgrade:
            plan["kept" if installed_version(name) else "install"].append(r)
        elif not is_satisfied(r):
            plan["install"].append(r)
        elif upgrade:
            plan["upgrade"].append(r)
    return plan


def torch_status(requirement: str = TORCH_REQUIREMENT) -> Tuple[str, Optional[str]]:
    """("missing" | "too_old" | "ok", installed version) from package metadata: torch is never
    imported here (importing it into Slicer's process would lock its files until a restart)."""
    version = installed_version("torch")
    if version is None:
        return "missing", None
    return ("ok" if is_satisfied("torch" + requirement) else "too_old"), version


def constraints_text(names: Sequence[str] = CONSTRAINED) -> str:
    """pip constraints pinning the installed versions of ``names`` (so pip cannot replace them)."""
    lines = []
    for n in names:
        v = installed_version(n)
        if v:
            lines.append(f"{n}=={v}")
    return "\n".join(lines) + ("\n" if lines else "")


def gpu_memory_gib(timeout: float = 5.0) -> Optional[List[float]]:
    """Total memory of each NVIDIA GPU in GiB via ``nvidia-smi`` (no torch import); None when
    there is no NVIDIA driver."""
    import shutil

    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    values = []
    for line in out.stdout.splitlines():
        try:
            values.append(float(line.strip()) / 1024.0)
        except ValueError:
            continue
    return values or None


SMALL_GPU_GIB = 6.0


def gpu_warning(device: str, memory_gib: Optional[List[float]]) -> str:
    """A warning for the device choice, or '' when there is nothing to say."""
    device = (device or "auto").lower()
    if device == "cpu":
        return ""
    if not memory_gib:
        if device in ("gpu", "cuda"):
            return "No NVIDIA GPU found: the run will fail on GPU; choose auto or CPU."
        return ""
    best = max(memory_gib)
    if best < SMALL_GPU_GIB:
        return (f"The GPU has only {best:.1f} GiB of memory: large volumes may run out of memory. "
                "Use Fast mode or an ROI, or choose CPU.")
    return ""
