"""Segmentation metrics (LiTS protocol, as computed by ``medpy.metric.binary``).

Depends only on numpy and scipy. Arrays are label maps (0 background, 1 liver, 2 tumour) in
SimpleITK array order ``(z, y, x)``; ``spacing`` is given in the same axis order (mm).
Regions: ``"liver"`` = labels >= 1 (liver including tumour), ``"tumor"`` = label 2.

Per region, :func:`evaluate_case` returns

- ``dice`` = 2|P n G| / (|P| + |G|)
- ``voe``  = 1 - |P n G| / |P u G|
- ``rvd``  = (|P| - |G|) / |G|  (signed; tables usually report its magnitude)
- ``asd``  = average symmetric surface distance in mm. Default ``asd_mode="mean-of-directed"``:
  the mean of the two directed mean surface distances,
  (mean d(S(P)->S(G)) + mean d(S(G)->S(P))) / 2. This is ``medpy.metric.binary.assd`` up to
  medpy 0.4, the version the LiTS challenge evaluation used, so the project's numbers compare
  with published LiTS results. ``asd_mode="pooled"``: the mean over both directed distance
  sets pooled, sum(d_PG + d_GP) / (|S(P)| + |S(G)|), which is what medpy 0.5's ``assd``
  computes and the literal wording of the paper's Eq. 12. The two are equal when
  |S(P)| = |S(G)| and differ otherwise (the pooled mean weights the larger surface more).
  ``livertumorseg evaluate --asd {mean-of-directed,pooled}`` chooses.
- ``hd95`` = 95th percentile (numpy linear interpolation) of both directed distance sets
  pooled. This is the issue's definition AND what ``medpy.metric.binary.hd95`` computes
  (``percentile(hstack((d_pg, d_gp)), 95)``). ``hd95_mode="max_directed"`` gives
  max(percentile(d_pg, 95), percentile(d_gp, 95)) (the MONAI / "robust Hausdorff" variant),
  which is >= the pooled value.

Surfaces: S(M) = M minus its erosion by the 6-connected structuring element
(``generate_binary_structure(3, 1)``, voxels outside the array count as background, as in
medpy). d(S(P)->S(G)) = Euclidean distance transform (with ``sampling=spacing``) of the
complement of S(G), read at the voxels of S(P). Arrays are cropped to the bounding box of
P u G plus a 1-voxel margin first; this does not change any value.

Empty masks (the conventions, also used by the aggregator):

============== ====== ===== ====== ============ =========================================
P / G          dice   voe   rvd    asd, hd95    notes
============== ====== ===== ====== ============ =========================================
both empty     1.0    0.0   0.0    0.0          a correct "no tumour" answer is perfect
P empty only   0.0    1.0   -1.0   None         distance to an empty surface is undefined
G empty only   0.0    1.0   None   None         rvd divides by |G| = 0: undefined
============== ====== ===== ====== ============ =========================================

Undefined values are ``None`` (JSON ``null``), never NaN, so every result dict is
JSON-serialisable as it is. :class:`MetricsAggregator` leaves ``None`` out of means and says
how many values it used (``n``).

Tumour-level analysis (:func:`tumour_analysis`): see its docstring.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .utils.regions import bounding_box, max_diameter  # noqa: F401 (max_diameter: public here too)

from .errors import ConfigError

METRIC_NAMES = ("dice", "voe", "rvd", "asd", "hd95")
REGIONS = ("liver", "tumor")
HD95_MODES = ("pooled", "max_directed")
ASD_MODES = ("mean-of-directed", "pooled")  # medpy <= 0.4 (LiTS) / medpy 0.5

# Tumour size strata of the paper (Figures 10-11), by maximum diameter in voxels; half-open
# intervals [lo, hi).
SIZE_STRATA: Tuple[Tuple[str, float, float], ...] = (
    ("<10", 0.0, 10.0),
    ("10-20", 10.0, 20.0),
    ("20-30", 20.0, 30.0),
    ("30-50", 30.0, 50.0),
    (">50", 50.0, math.inf),
)

_SURFACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


# ----------------------------------------------------------------------------- helpers
def _check_spacing(spacing: Sequence[float], ndim: int) -> Tuple[float, ...]:
    sp = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(sp) == 1 and ndim > 1:
        sp = sp * ndim
    if len(sp) != ndim:
        raise ConfigError(f"spacing has {len(sp)} values for a {ndim}-D array")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"spacing must be positive and finite, got {sp}")
    return sp


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ConfigError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def region_masks(labels: np.ndarray) -> Dict[str, np.ndarray]:
    """``{"liver": labels >= 1, "tumor": labels == 2}`` as boolean arrays."""
    labels = np.asarray(labels)
    return {"liver": labels >= 1, "tumor": labels == 2}


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its 6-connected erosion (outside the array = background)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(d(S(P)->S(G)), d(S(G)->S(P)))``.

    Both masks must be non-empty (``ConfigError``, a ValueError, otherwise).
    """
    pred, ref = _check_pair(np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool))
    sp = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        raise ConfigError("surface distances need two non-empty masks")
    box = bounding_box(pred | ref, margin=1)
    p, g = pred[box], ref[box]
    sp_, sg = surface(p), surface(g)
    d_pg = ndimage.distance_transform_edt(~sg, sampling=sp)[sp_]
    d_gp = ndimage.distance_transform_edt(~sp_, sampling=sp)[sg]
    return d_pg.astype(np.float64), d_gp.astype(np.float64)


def _clean(value: float) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- per case
def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    hd95_mode: str = "pooled",
    asd_mode: str = "mean-of-directed",
) -> Dict[str, Optional[float]]:
    """Dice, VOE, RVD, ASD, HD95 of two binary masks (see the module docstring)."""
    if hd95_mode not in HD95_MODES:
        raise ConfigError(f"hd95_mode must be one of {HD95_MODES}, got {hd95_mode!r}")
    if asd_mode not in ASD_MODES:
        raise ConfigError(f"asd_mode must be one of {ASD_MODES}, got {asd_mode!r}")
    p, g = _check_pair(np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool))
    sp = _check_spacing(spacing, p.ndim)
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    if n_p == 0 and n_g == 0:
        return {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "asd": 0.0, "hd95": 0.0}
    if n_p == 0 or n_g == 0:
        return {"dice": 0.0, "voe": 1.0, "rvd": -1.0 if n_p == 0 else None, "asd": None, "hd95": None}
    inter = int(np.count_nonzero(p & g))
    union = n_p + n_g - inter
    d_pg, d_gp = surface_distances(p, g, sp)
    if asd_mode == "mean-of-directed":
        asd = (d_pg.mean() + d_gp.mean()) / 2.0
    else:
        asd = np.concatenate([d_pg, d_gp]).mean()
    if hd95_mode == "pooled":
        hd95 = np.percentile(np.concatenate([d_pg, d_gp]), 95)
    else:
        hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return {
        "dice": 2.0 * inter / (n_p + n_g),
        "voe": 1.0 - inter / union,
        "rvd": (n_p - n_g) / n_g,
        "asd": _clean(asd),
        "hd95": _clean(hd95),
    }


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx: Sequence[float],
    hd95_mode: str = "pooled",
    asd_mode: str = "mean-of-directed",
) -> Dict[str, Dict[str, Optional[float]]]:
    """``{"liver": {dice, voe, rvd, asd, hd95}, "tumor": {...}}`` for two label maps.

    ``pred`` and ``ref`` are integer label maps of the same shape, ``spacing_zyx`` the voxel
    spacing in mm in array axis order. Values are Python floats or ``None`` (undefined).
    """
    pred, ref = _check_pair(pred, ref)
    pm, gm = region_masks(pred), region_masks(ref)
    return {r: binary_metrics(pm[r], gm[r], spacing_zyx, hd95_mode=hd95_mode, asd_mode=asd_mode) for r in REGIONS}


def overlap_counts(pred: np.ndarray, ref: np.ndarray) -> Dict[str, Dict[str, int]]:
    """Per region ``{"pred": |P|, "ref": |G|, "inter": |P n G|}`` (for global Dice)."""
    pred, ref = _check_pair(pred, ref)
    pm, gm = region_masks(pred), region_masks(ref)
    return {
        r: {
            "pred": int(np.count_nonzero(pm[r])),
            "ref": int(np.count_nonzero(gm[r])),
            "inter": int(np.count_nonzero(pm[r] & gm[r])),
        }
        for r in REGIONS
    }


# ----------------------------------------------------------------------------- tumours
def size_stratum(diameter_vox: float) -> str:
    """Name of the paper's size stratum for a maximum diameter in voxels ([lo, hi) bins)."""
    for name, lo, hi in SIZE_STRATA:
        if lo <= diameter_vox < hi:
            return name
    raise ConfigError(f"diameter must be >= 0, got {diameter_vox}")


def tumour_analysis(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    connectivity: int = 26,
) -> Dict[str, object]:
    """Per-tumour detection and Dice, by the paper's size strata.

    Tumours are the connected components of ``ref == 2`` (``connectivity`` 26, the default,
    or 6; 18 also accepted); predicted tumours likewise from ``pred == 2``. For each
    reference tumour:

    - ``voxels``, ``volume_mm3``;
    - ``diameter_vox`` / ``diameter_mm``: the maximum distance between the centres of two of
      its voxels, in voxel index units / in mm (a single voxel has diameter 0, a straight row
      of n voxels n - 1). Voxels are those of the evaluated grid (the reference's);
    - ``stratum``: "<10", "10-20", "20-30", "30-50", ">50" by ``diameter_vox``, bins [lo, hi);
    - ``detected``: any predicted tumour voxel overlaps it; ``overlap_fraction`` = share of
      its voxels predicted as tumour;
    - ``dice``: against the union of the predicted tumour components that overlap it
      (0 when missed). A predicted component that touches two tumours counts for both.

    Also ``false_positives``: predicted tumour components that overlap no reference tumour.
    Returns a JSON-serialisable dict ``{"connectivity", "tumours": [...], "n_tumours",
    "n_detected", "n_pred_components", "false_positives", "strata": summarise_strata(...)}``.
    """
    pred, ref = _check_pair(pred, ref)
    sp = np.asarray(_check_spacing(spacing, ref.ndim))
    if ref.ndim != 3:
        raise ConfigError("tumour analysis needs 3-D label maps")
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise ConfigError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, rank)
    g_lab, n_g = ndimage.label(ref == 2, structure=structure)
    p_lab, n_p = ndimage.label(pred == 2, structure=structure)
    p_sizes = np.bincount(p_lab.ravel(), minlength=n_p + 1)
    voxel_mm3 = float(np.prod(sp))
    tumours: List[Dict[str, object]] = []
    hit_pred = np.zeros(n_p + 1, dtype=bool)
    objects = ndimage.find_objects(g_lab)
    for i, sl in enumerate(objects, start=1):
        comp = g_lab[sl] == i
        n_vox = int(np.count_nonzero(comp))
        idx = np.argwhere(surface(comp)).astype(np.float64)  # extremes lie on the surface
        idx += [s.start for s in sl]
        inside = p_lab[sl][comp]
        overlapping = np.unique(inside[inside > 0])
        hit_pred[overlapping] = True
        # every predicted voxel inside the tumour belongs to an overlapping component
        n_hit = int(np.count_nonzero(inside))
        dice = 2.0 * n_hit / (n_vox + int(p_sizes[overlapping].sum())) if n_hit else 0.0
        d_vox = max_diameter(idx)
        tumours.append(
            {
                "id": i,
                "voxels": n_vox,
                "volume_mm3": n_vox * voxel_mm3,
                "diameter_vox": d_vox,
                "diameter_mm": max_diameter(idx * sp),
                "stratum": size_stratum(d_vox),
                "detected": n_hit > 0,
                "overlap_fraction": n_hit / n_vox,
                "dice": dice,
            }
        )
    n_fp = int(n_p - np.count_nonzero(hit_pred[1:]))
    return {
        "connectivity": int(connectivity),
        "n_tumours": int(n_g),
        "n_detected": int(sum(1 for t in tumours if t["detected"])),
        "n_pred_components": int(n_p),
        "false_positives": n_fp,
        "tumours": tumours,
        "strata": summarise_strata(tumours),
    }


def summarise_strata(tumours: Iterable[Mapping[str, object]]) -> Dict[str, Dict[str, object]]:
    """Per size stratum: ``count``, ``detected``, ``detection_rate``, ``dice_mean``,
    ``dice_std`` (population std), ``overlap_mean``; rates/means are ``None`` for an empty
    stratum. Works on the tumours of one case or of a whole test set."""
    tumours = list(tumours)
    out: Dict[str, Dict[str, object]] = {}
    for name, _, _ in SIZE_STRATA:
        group = [t for t in tumours if t["stratum"] == name]
        dices = np.array([float(t["dice"]) for t in group], dtype=np.float64)
        overl = np.array([float(t["overlap_fraction"]) for t in group], dtype=np.float64)
        n_det = int(sum(1 for t in group if t["detected"]))
        out[name] = {
            "count": len(group),
            "detected": n_det,
            "detection_rate": n_det / len(group) if group else None,
            "dice_mean": float(dices.mean()) if group else None,
            "dice_std": float(dices.std()) if group else None,
            "overlap_mean": float(overl.mean()) if group else None,
        }
    return out


# ----------------------------------------------------------------------------- aggregation
_analyse_tumours = tumour_analysis  # MetricsAggregator.add has a parameter of that name


class MetricsAggregator:
    """Accumulates cases; gives mean/std per metric and region, and global Dice.

    ``add(case_id, pred, ref, spacing)`` evaluates one case (and, with
    ``tumour_analysis=True``, its tumours) and returns the per-case metrics. Statistics leave
    out ``None`` values (undefined distances) and report how many values they used (``n``);
    std is the population std (ddof=0). Global Dice per region =
    2 * sum|P n G| / (sum|P| + sum|G|) over all cases (1.0 when both sums are 0).
    """

    def __init__(self, hd95_mode: str = "pooled", asd_mode: str = "mean-of-directed", connectivity: int = 26) -> None:
        self.hd95_mode = hd95_mode
        self.asd_mode = asd_mode
        self.connectivity = connectivity
        self.cases: List[Dict[str, object]] = []  # {"case_id", "liver", "tumor"}
        self.tumours: List[Dict[str, object]] = []  # with "case_id"
        self._counts = {r: {"pred": 0, "ref": 0, "inter": 0} for r in REGIONS}
        self._false_positives = 0
        self._analysed = False

    def add(
        self,
        case_id: str,
        pred: np.ndarray,
        ref: np.ndarray,
        spacing: Sequence[float],
        tumour_analysis: bool = False,
    ) -> Dict[str, Dict[str, Optional[float]]]:
        result = evaluate_case(pred, ref, spacing, hd95_mode=self.hd95_mode, asd_mode=self.asd_mode)
        analysis = None
        if tumour_analysis:
            analysis = _analyse_tumours(pred, ref, spacing, connectivity=self.connectivity)
        self.add_result(case_id, result, overlap_counts(pred, ref), analysis)
        return result

    def add_result(
        self,
        case_id: str,
        result: Mapping[str, Mapping[str, Optional[float]]],
        counts: Mapping[str, Mapping[str, int]],
        analysis: Optional[Mapping[str, object]] = None,
    ) -> None:
        """Add an already computed case (``evaluate_case``, ``overlap_counts`` and optionally
        ``tumour_analysis`` outputs)."""
        self.cases.append({"case_id": str(case_id), **{r: dict(result[r]) for r in REGIONS}})
        for r in REGIONS:
            for k in ("pred", "ref", "inter"):
                self._counts[r][k] += int(counts[r][k])
        if analysis is not None:
            self._analysed = True
            self._false_positives += int(analysis["false_positives"])
            for t in analysis["tumours"]:
                self.tumours.append({"case_id": str(case_id), **t})

    def __len__(self) -> int:
        return len(self.cases)

    def global_dice(self, region: str = "tumor") -> Optional[float]:
        c = self._counts[region]
        if not self.cases:
            return None
        denom = c["pred"] + c["ref"]
        return 1.0 if denom == 0 else 2.0 * c["inter"] / denom

    def stats(self) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
        """``{region: {metric: {"mean", "std", "n"}}}`` (None when no value is defined)."""
        out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
        for r in REGIONS:
            out[r] = {}
            for m in METRIC_NAMES:
                vals = np.array([c[r][m] for c in self.cases if c[r][m] is not None], dtype=np.float64)
                out[r][m] = {
                    "mean": float(vals.mean()) if len(vals) else None,
                    "std": float(vals.std()) if len(vals) else None,
                    "n": int(len(vals)),
                }
        return out

    def summary(self) -> Dict[str, object]:
        """JSON-serialisable summary: n_cases, per-region stats, global Dice, tumour strata."""
        out: Dict[str, object] = {
            "n_cases": len(self.cases),
            "hd95_mode": self.hd95_mode,
            "asd_mode": self.asd_mode,
            **self.stats(),
            "global_dice": {r: self.global_dice(r) for r in REGIONS},
        }
        if self._analysed:
            out["tumour_analysis"] = {
                "connectivity": self.connectivity,
                "n_tumours": len(self.tumours),
                "n_detected": int(sum(1 for t in self.tumours if t["detected"])),
                "false_positives": self._false_positives,
                "strata": summarise_strata(self.tumours),
            }
        return out


def format_table(result: Mapping[str, Mapping[str, Optional[float]]]) -> str:
    """A small text table of one case's metrics (rows: regions; columns: metrics)."""

    def fmt(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    header = f"{'region':<8}" + "".join(f"{m:>10}" for m in METRIC_NAMES)
    rows = [header]
    for r in REGIONS:
        rows.append(f"{r:<8}" + "".join(f"{fmt(result[r][m]):>10}" for m in METRIC_NAMES))
    return "\n".join(rows)
