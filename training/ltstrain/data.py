"""Training samples: random 3D patches from the cache, with augmentation.

Every sample ``i`` of epoch ``e`` draws its randomness from its own generator
``numpy.random.default_rng([seed, e, i])``, so a sample is the same whatever the worker, the
number of workers, the process (DDP rank) or a resume: runs are reproducible and a resumed run
sees exactly the samples the uninterrupted run would have seen.

Patch choice (paper: "48 consecutive slices that contain liver"):

- z (``slab_sampling`` "liver", the default): a window of ``patch_size[0]`` consecutive
  slices inside the liver slice range ``liver_z`` of the case (when the liver spans fewer
  slices than the window, a window that covers the whole liver range, clipped to the volume);
  ``slab_sampling`` "any": a window anywhere in the volume, uniformly (a whole-field-of-view
  liver locator must also see chest and pelvis). Volumes smaller than the window are padded
  (image 0 = the lower HU clip, label 0).
- in-plane: with probability ``fg_prob`` centred (jitter +- a quarter patch) on a random
  liver voxel of the slab, or a tumour voxel with probability ``tumour_prob`` when the slab has
  tumour; otherwise (and always when the slab has no liver) uniformly random. With the
  paper's 256 x 256 patch on a 256 x 256 plane this choice has no effect.
- which tumour (``tumour_sampling``): "voxel" = a random tumour voxel, so a liver with one
  60 mm mass and forty 5 mm metastases is sampled almost only at the mass; "lesion" = a random
  lesion (26-connected component of the label) whose centre lies in the slab, centred on that
  centre: every lesion is drawn equally often, whatever its size.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .cache import CachedCase
from .config import AugmentConfig, TrainConfig


def crop_pad(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``arr[start:start+size]`` per axis, padding with ``fill`` where it leaves the array."""
    out = np.full(tuple(size), fill, dtype=arr.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, arr.shape):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def choose_z(rng: np.random.Generator, depth: int, pz: int, liver_z: Optional[Sequence[int]],
             slab_sampling: str = "liver") -> int:
    """First slice of the z window (may be negative when the volume is thinner than pz).

    ``slab_sampling`` "liver": inside the liver slice range ``liver_z``; "any": anywhere.
    """
    if depth <= pz:
        return -((pz - depth) // 2)
    a, b = (0, depth - 1) if (not liver_z or slab_sampling == "any") else (int(liver_z[0]), int(liver_z[1]))
    if b - a + 1 >= pz:
        lo, hi = a, b - pz + 1
    else:
        lo, hi = b - pz + 1, a
    lo, hi = max(lo, 0), min(hi, depth - pz)
    if hi < lo:
        lo = hi = min(max(lo, 0), depth - pz)
    return int(rng.integers(lo, hi + 1))


def _choose_start(rng: np.random.Generator, dim: int, p: int, centre: Optional[int]) -> int:
    if dim <= p:
        return -((p - dim) // 2)
    if centre is None:
        return int(rng.integers(0, dim - p + 1))
    jitter = int(rng.integers(-(p // 4), p // 4 + 1)) if p >= 4 else 0
    return int(min(max(centre - p // 2 + jitter, 0), dim - p))


def lesion_centres(label: np.ndarray) -> np.ndarray:
    """(n, 3) int32 voxel centres (z, y, x) of the tumour label's 26-connected components."""
    from scipy import ndimage

    tumour = np.asarray(label) == 2
    components, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros((0, 3), np.int32)
    centres = ndimage.center_of_mass(tumour, components, range(1, n + 1))
    return np.rint(np.asarray(centres)).astype(np.int32).reshape(-1, 3)


def shading_field(shape: Sequence[int], amplitude: float, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """A smooth (D, H, W) field with peak |value| ``amplitude``: Gaussian values on a coarse grid
    (about 2 / ``scale`` nodes per axis, at least 2) upsampled trilinearly to ``shape``. Additive in
    the HU window, unlike MONAI's multiplicative RandBiasField / power-law smooth-field transforms,
    and drawn from the dataset's own ``rng`` so that a resumed run repeats it."""
    nodes = [max(2, int(round(2.0 / max(scale, 1e-3)))) for _ in shape]
    coarse = torch.from_numpy(rng.standard_normal(nodes).astype(np.float32))[None, None]
    field_ = F.interpolate(coarse, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0]
    peak = float(field_.abs().max())
    return field_ * (amplitude / peak) if peak > 0 else field_


def augment_patch(
    image: torch.Tensor, label: torch.Tensor, aug: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one (1, D, H, W) image / label pair in place of copies; all draws from ``rng``."""
    if not aug.enabled:
        return image, label
    if aug.spatial_prob > 0 and rng.random() < aug.spatial_prob and (aug.rotate_deg > 0 or aug.scale > 0):
        angle = math.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        zoom = rng.uniform(1.0 - aug.scale, 1.0 + aug.scale)
        _, d, h, w = image.shape
        c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
        # in-plane rotation about the patch centre, corrected for the normalised-coordinate
        # aspect ratio (grid order x, y, z).
        theta = torch.tensor(
            [[c, -s * h / w, 0.0, 0.0], [s * w / h, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float32
        )[None]
        grid = F.affine_grid(theta, (1, 1, d, h, w), align_corners=False)
        image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        label = F.grid_sample(label[None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)[0].to(label.dtype)
    for axis, p in enumerate(aug.flip_prob):
        if p > 0 and rng.random() < p:
            image = torch.flip(image, dims=(axis + 1,))
            label = torch.flip(label, dims=(axis + 1,))
    changed = False
    if aug.intensity_prob > 0 and rng.random() < aug.intensity_prob:
        scale = rng.uniform(1.0 - aug.intensity_scale, 1.0 + aug.intensity_scale)
        shift = rng.uniform(-aug.intensity_shift, aug.intensity_shift)
        image = image * float(scale) + float(shift)
        changed = True
    if aug.shading_prob > 0 and aug.shading_amp > 0 and rng.random() < aug.shading_prob:
        image = image + shading_field(tuple(image.shape[1:]), float(rng.uniform(0.0, aug.shading_amp)),
                                      aug.shading_scale, rng)[None]
        changed = True
    if aug.noise_prob > 0 and aug.noise_std > 0 and rng.random() < aug.noise_prob:
        sigma = float(rng.uniform(0.0, aug.noise_std))
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        image = image + sigma * torch.randn(image.shape, generator=g)
        changed = True
    if changed:
        image = image.clamp_(0.0, 1.0)
    return image.contiguous(), label.contiguous()


class PatchDataset(Dataset):
    """``len = n_cases * samples_per_case``; item ``i`` is a patch of case ``i % n_cases``."""

    def __init__(self, cases: Sequence[CachedCase], cfg: TrainConfig, seed: Optional[int] = None) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = list(cases)
        self.cfg = cfg
        self.seed = int(cfg.seed if seed is None else seed)
        self.epoch = 0
        self._fg: dict[str, dict[str, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cases) * max(1, int(self.cfg.samples_per_case))

    def _fg_of(self, case: CachedCase) -> dict[str, np.ndarray]:
        if case.case_id not in self._fg:
            fg = case.fg()
            if self.cfg.tumour_sampling == "lesion":
                fg["lesion_centres"] = lesion_centres(case.label())
            self._fg[case.case_id] = fg
        return self._fg[case.case_id]

    def sample(self, index: int, epoch: Optional[int] = None) -> dict:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        case = self.cases[index % len(self.cases)]
        cfg = self.cfg
        pz, py, px = cfg.patch_size
        img = case.image()
        lab = case.label()
        d, h, w = img.shape
        z0 = choose_z(rng, d, pz, case.entry.get("liver_z"), cfg.slab_sampling)
        cy = cx = None
        if cfg.fg_prob > 0 and rng.random() < cfg.fg_prob:
            fg = self._fg_of(case)
            pools = []
            tum = fg.get("lesion_centres" if cfg.tumour_sampling == "lesion" else "tumor", np.zeros((0, 3), np.int32))
            liv = fg.get("liver", np.zeros((0, 3), np.int32))
            tum = tum[(tum[:, 0] >= z0) & (tum[:, 0] < z0 + pz)] if len(tum) else tum
            liv = liv[(liv[:, 0] >= z0) & (liv[:, 0] < z0 + pz)] if len(liv) else liv
            if len(tum) and rng.random() < cfg.tumour_prob:
                pools = tum
            elif len(liv):
                pools = liv
            if len(pools):
                c = pools[int(rng.integers(len(pools)))]
                cy, cx = int(c[1]), int(c[2])
        y0 = _choose_start(rng, h, py, cy)
        x0 = _choose_start(rng, w, px, cx)
        im = crop_pad(img, (z0, y0, x0), (pz, py, px), 0.0).astype(np.float32)
        lb = crop_pad(lab, (z0, y0, x0), (pz, py, px), 0).astype(np.int64)
        image = torch.from_numpy(im)[None]
        label = torch.from_numpy(lb)[None]
        image, label = augment_patch(image, label, cfg.augment, rng)
        return {"image": image, "label": label, "case_id": case.case_id, "start": [z0, y0, x0]}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def worker_init_fn(worker_id: int) -> None:
    """Seed each DataLoader worker's global RNGs from torch's per-worker seed."""
    s = torch.initial_seed() % (2**32)
    random.seed(s + worker_id)
    np.random.seed((s + worker_id) % (2**32))


def collate(batch: list[dict]) -> dict:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "case_id": [b["case_id"] for b in batch],
        "start": [b["start"] for b in batch],
    }
