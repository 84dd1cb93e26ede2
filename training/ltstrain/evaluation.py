"""Whole-volume prediction of cached cases and their metrics (validation and test).

Prediction: MONAI ``sliding_window_inference`` on the cached network-grid volume, window =
the training patch (clipped to the volume), Gaussian blending, ``overlap`` 0.25 (validation)
or 0.5 (test). Metrics are computed on the network grid with its spacing (the space the paper
trains and evaluates in: 256 x 256 in-plane, 1 mm slices); ``livertumorseg evaluate`` does the
same on the input grid for files.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .cache import CachedCase

REGIONS = ("liver", "tumor")
METRICS = ("dice", "voe", "rvd", "asd", "hd95")


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    image: np.ndarray,
    window: Sequence[int],
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    amp: bool = False,
    sw_batch_size: int = 1,
    return_probs: bool = False,
    spacing_zyx: Optional[Sequence[float]] = None,
):
    """Label map (uint8, same shape as ``image``) of one (D, H, W) network-grid volume.

    Predicts exactly as the application does (``inference.predict_network_grid``: Gaussian
    blending of the softmax, body crop when the spacing is known), so validation scores the
    model that users will run.
    """
    from LiverTumorSegLib.inference import SegmentOptions, argmax_labels, predict_network_grid

    # the training patch is the model's window: thinner volumes are padded up to it, as in the application
    opts = SegmentOptions(window=tuple(window), overlap=overlap, sw_batch_size=sw_batch_size,
                          amp=amp, crop_to_body=spacing_zyx is not None, min_window=tuple(window))
    was_training = model.training
    model.eval()
    try:
        p1, p2, _ = predict_network_grid(model, np.asarray(image, dtype=np.float32), spacing_zyx or (1.0, 1.0, 1.0),
                                         opts, device=torch.device(device))
    finally:
        model.train(was_training)
    labels = argmax_labels(p1, p2)
    if return_probs:
        return labels, np.stack([np.clip(1.0 - p1 - p2, 0.0, 1.0), p1, p2])
    return labels


def liver_box(label: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> Optional[tuple[slice, ...]]:
    """The box of ``label >= 1`` grown by ``margin_mm`` on every side (voxels rounded up),
    clipped to the volume; None without liver."""
    from LiverTumorSegLib.utils.regions import bounding_box

    margin = [int(np.ceil(float(margin_mm) / float(s) - 1e-9)) for s in spacing_zyx]
    return bounding_box(np.asarray(label) >= 1, margin)


def dice_pair(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (metrics.py convention)."""
    n_p, n_g = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_p + n_g == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (n_p + n_g)


def quick_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"liver": dice_pair(pred >= 1, ref >= 1), "tumor": dice_pair(pred == 2, ref == 2)}


def validate(
    model: torch.nn.Module,
    cases: Sequence[CachedCase],
    window: Sequence[int],
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    amp: bool = False,
    box_margin_mm: Optional[float] = None,
) -> dict[str, Any]:
    """Dice of liver and tumour per validation case and their means; ``score`` =
    (mean liver Dice + mean tumour Dice) / 2, the model-selection criterion.

    ``box_margin_mm``: predict only inside the reference liver's box grown by this margin (what
    stage 2 of a two-stage bundle sees; Dice still over the whole volume, zero outside the box);
    cases without liver are left out (``skipped``). None: the whole volume."""
    per_case = {}
    skipped = []
    t0 = time.perf_counter()
    for case in cases:
        image, ref = case.image(), np.asarray(case.label())
        if box_margin_mm is None:
            pred = predict_labels(model, image, window, overlap, device, amp, spacing_zyx=case.spacing_zyx)
        else:
            box = liver_box(ref, case.spacing_zyx, box_margin_mm)
            if box is None:
                skipped.append(case.case_id)
                continue
            pred = np.zeros(ref.shape, np.uint8)
            pred[box] = predict_labels(model, image[box], window, overlap, device, amp, spacing_zyx=case.spacing_zyx)
        per_case[case.case_id] = quick_dice(pred, ref)
    liver = float(np.mean([v["liver"] for v in per_case.values()])) if per_case else float("nan")
    tumor = float(np.mean([v["tumor"] for v in per_case.values()])) if per_case else float("nan")
    return {
        "dice_liver": liver,
        "dice_tumor": tumor,
        "score": (liver + tumor) / 2.0,
        "n_cases": len(per_case),
        "per_case": per_case,
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }


def evaluate_cases(
    model: torch.nn.Module,
    cases: Sequence[CachedCase],
    window: Sequence[int],
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
    amp: bool = False,
    tumours: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Full LiTS metrics (metrics.evaluate_case) per case, plus the per-tumour analysis."""
    from LiverTumorSegLib import metrics

    out: dict[str, Any] = {"cases": {}, "tumours": []}
    for case in cases:
        t0 = time.perf_counter()
        pred = predict_labels(model, case.image(), window, overlap, device, amp, spacing_zyx=case.spacing_zyx)
        ref = np.asarray(case.label())
        res = metrics.evaluate_case(pred, ref, case.spacing_zyx)
        out["cases"][case.case_id] = res
        if tumours:
            ana = metrics.tumour_analysis(pred, ref, case.spacing_zyx)
            for t in ana["tumours"]:
                out["tumours"].append({"case_id": case.case_id, **t})
            out["cases"][case.case_id]["_tumour_fp"] = ana["false_positives"]
        if log:
            log(f"  {case.case_id}: liver {res['liver']['dice']:.3f} tumour {res['tumor']['dice']:.3f} ({time.perf_counter() - t0:.1f}s)")
    out["summary"] = summarise_cases(out["cases"])
    return out


def summarise_cases(cases: dict[str, dict]) -> dict[str, dict[str, Optional[float]]]:
    """Per region and metric the mean over cases (None values left out; RVD as magnitude,
    as the paper's tables report it)."""
    out: dict[str, dict[str, Optional[float]]] = {}
    for r in REGIONS:
        out[r] = {}
        for m in METRICS:
            vals = [c[r][m] for c in cases.values() if c[r][m] is not None]
            if m == "rvd":
                vals = [abs(v) for v in vals]
            out[r][m] = float(np.mean(vals)) if vals else None
    return out
