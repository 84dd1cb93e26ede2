"""Segment one CT volume: preprocess, sliding-window network, back to the input grid, clean up.

``segment(image, loaded, options, progress)`` walks the corridor of the architecture notes:

    validate -> preprocess (network grid) -> sliding-window softmax (MONAI, Gaussian blending,
    inference mode) -> probabilities back on the input grid -> argmax -> post-process -> report

This module holds the sliding window and the orchestration; the way back to the input grid is
:mod:`.transforms.restore`, the boxes :mod:`.utils.regions`.

The label map it returns lies on exactly the input image's grid (size, spacing, origin,
direction). Progress is reported per window batch and every report is a cancellation point;
nothing is written here (the caller writes), so a cancelled run leaves no file behind.

Device: ``auto`` = CUDA, then MPS, then CPU. On a CUDA out-of-memory error the run is retried
with ``sw_batch_size`` 1, then in half precision with the blending buffer on the CPU, then on
the CPU; each fallback is recorded in ``report["notes"]``.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from .device import empty_cache, is_oom, resolve_device, set_cpu_threads
from .errors import LiverTumorSegError
from .options import DEFAULT_WINDOW, PostprocessOptions, SegmentOptions  # noqa: F401 (re-exported)
from .postprocess import postprocess_labels
from .progress import ProgressEvent, ProgressReporter
# The way back to the input grid lives in transforms.restore; argmax_labels/restore_labels are
# re-exported here for callers that import them from inference (training's validation).
from .transforms.restore import (argmax_labels, labels_from_probabilities, resample_probabilities,  # noqa: F401
                                 restore_labels)
from .utils.regions import bounding_box

# Share of the whole run per phase (the command line adds read/write around segment()).
PHASE_WEIGHTS = {"read": 0.04, "preprocess": 0.08, "inference": 0.74, "restore": 0.07, "postprocess": 0.04,
                 "write": 0.03}


@dataclass
class SegmentationResult:
    labelmap: sitk.Image  # uint8, 0 background / 1 liver / 2 tumour, on the input grid
    report: dict
    timings: dict = field(default_factory=dict)
    probabilities: Optional[np.ndarray] = None  # (3, z, y, x) float32 on the input grid, if asked
    # (P(liver parenchyma), P(tumour)) float16 (z, y, x) on the input grid, as used for the labels
    # (cropped restore: exact above 0.3, 0 elsewhere); written by ``segment --probabilities``
    input_probabilities: Optional[tuple] = None


def as_reporter(progress: Union[None, ProgressReporter, Callable[[ProgressEvent], Any]]) -> ProgressReporter:
    """A ProgressReporter from a reporter, a bare callback, or None."""
    if isinstance(progress, ProgressReporter):
        return progress
    return ProgressReporter(progress, {k: v for k, v in PHASE_WEIGHTS.items() if k not in ("read", "write")})


def count_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference visits (same scan rule)."""
    n = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        if size <= r:
            continue
        interval = max(int(r * (1.0 - overlap)), 1)
        n *= math.ceil((size - r) / interval) + 1
    return n


class _WindowPredictor:
    """Wraps the network for sliding_window_inference: softmax, progress, cancellation.

    Returns the liver and tumour probabilities (B, 2, ...), so the blending buffers hold two
    channels, not three."""

    def __init__(self, model: torch.nn.Module, total: int, reporter: ProgressReporter, amp_cuda: bool,
                 channels_last: bool) -> None:
        self.model = model
        self.total = max(1, total)
        self.reporter = reporter
        self.amp_cuda = amp_cuda
        self.channels_last = channels_last
        self.done = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp_cuda else contextlib.nullcontext()
        with ctx:
            logits = self.model(x)
        # liver and tumour channels only: P(background) = 1 - the two (blending is convex)
        probs = torch.softmax(logits.float(), dim=1)[:, 1:].contiguous()
        self.done += int(x.shape[0])
        self.reporter.report("inference", min(1.0, self.done / self.total),
                             f"window {min(self.done, self.total)}/{self.total}")
        return probs


def _attempts(device: torch.device, options: SegmentOptions):
    """(device, sw_batch_size, amp, blend-buffer device, note) in fallback order."""
    b = int(options.sw_batch_size)
    cpu = torch.device("cpu")
    if device.type == "cuda":
        yield device, b, bool(options.amp), device, None
        if b > 1:
            yield device, 1, bool(options.amp), device, "CUDA out of memory: retried with batch size 1"
        yield device, 1, True, cpu, ("CUDA out of memory: retried with the blending buffers on the CPU" if options.amp
                                     else "CUDA out of memory: retried in half precision, blending on the CPU")
        yield cpu, b, False, cpu, "CUDA out of memory: fell back to the CPU"
    elif device.type == "mps":
        yield device, b, False, device, None
        yield cpu, b, False, cpu, "MPS out of memory: fell back to the CPU"
    else:
        yield cpu, b, False, cpu, None


def _sliding_window(x: torch.Tensor, model: torch.nn.Module, options: SegmentOptions, device: torch.device,
                    reporter: ProgressReporter, notes: list[str]) -> tuple[torch.Tensor, dict]:
    """Blended (p_liver, p_tumour) (1, 2, D, H, W) on the CPU, with the OOM fallback chain."""
    from monai.inferers import sliding_window_inference

    shape = tuple(x.shape[2:])
    roi = options.roi_for(shape)
    overlap = options.effective_overlap
    total = count_windows(shape, roi, overlap)
    attempts = list(_attempts(device, options))
    failed = False
    for i, (dev, batch, amp, agg, note) in enumerate(attempts):
        if note and failed:
            notes.append(note)
        try:
            model.to(dev)
            if options.channels_last:
                model.to(memory_format=torch.channels_last_3d)
            predictor = _WindowPredictor(model, total, reporter, amp and dev.type == "cuda", options.channels_last)
            with torch.inference_mode():
                out = sliding_window_inference(
                    x, roi_size=roi, sw_batch_size=batch, predictor=predictor, overlap=overlap,
                    mode=options.mode, sigma_scale=options.sigma_scale, padding_mode="replicate",
                    sw_device=dev, device=agg,
                )
            info = {"device": str(dev), "sw_batch_size": batch, "amp": bool(amp and dev.type == "cuda"),
                    "window": list(roi), "overlap": overlap, "windows": total,
                    # volume axes thinner than the window, replicate-padded up to it (SegmentOptions.roi_for)
                    "padded_axes": [a for a, (r, n) in enumerate(zip(roi, shape)) if r > n]}
            if dev.type == "cpu":
                info["threads"] = torch.get_num_threads()
            return out.to("cpu"), info
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_oom(exc):
                raise
            failed = True
            empty_cache(dev)
            if i == len(attempts) - 1:
                raise LiverTumorSegError(
                    f"out of memory on {dev.type} (window {tuple(roi)}, batch {batch}); try a smaller --window "
                    "or --batch 1, or free memory") from None
    raise AssertionError("unreachable")  # pragma: no cover


BODY_THRESHOLD = 0.025  # preprocessed value (HU window [-200, 200] -> [0, 1]): about -190 HU
BODY_MARGIN_MM = (5.0, 15.0, 15.0)  # (z, y, x) kept around the body's bounding box


def body_box(array: np.ndarray, spacing_zyx, threshold: float = BODY_THRESHOLD,
             margin_mm=BODY_MARGIN_MM) -> Optional[tuple[slice, ...]]:
    """Network-grid box (z, y, x slices) around everything denser than air/lung (None: no body)."""
    margin = [int(math.ceil(m / float(s))) for m, s in zip(margin_mm, spacing_zyx)]
    return bounding_box(array > threshold, margin)

def predict_network_grid(
    model: torch.nn.Module,
    array: np.ndarray,
    spacing_zyx,
    options: Optional[SegmentOptions] = None,
    device: Union[None, str, torch.device] = None,
    progress: Union[None, ProgressReporter, Callable[[ProgressEvent], Any]] = None,
    notes: Optional[list] = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(p_liver, p_tumour, compute info) on the network grid of a preprocessed (D, H, W) array.

    The network part of :func:`segment`, usable on its own (e.g. by training's validation, so
    that it predicts exactly as the application does): body crop, sliding window with Gaussian
    blending of the softmax, device fallback. P(background) = 1 - p_liver - p_tumour.
    """
    opts = options or SegmentOptions()
    reporter = as_reporter(progress)
    notes = notes if notes is not None else []
    dev = device if isinstance(device, torch.device) else resolve_device(device or opts.device)
    shape = tuple(array.shape)
    box = body_box(array, spacing_zyx) if opts.crop_to_body else tuple(slice(0, n) for n in shape)
    reporter.report("inference", 0.0, "starting")
    p1 = np.zeros(shape, dtype=np.float32)
    p2 = np.zeros(shape, dtype=np.float32)
    if box is not None:
        x = torch.from_numpy(np.ascontiguousarray(array[box], dtype=np.float32))[None, None]
        probs, compute = _sliding_window(x, model, opts, dev, reporter, notes)
        del x
        p1[box] = probs[0, 0].numpy()
        p2[box] = probs[0, 1].numpy()
        del probs
    else:  # nothing denser than air: no body, nothing to segment
        compute = {"device": str(dev), "windows": 0, "window": [], "overlap": opts.effective_overlap,
                   "sw_batch_size": opts.sw_batch_size, "amp": False}
        notes.append("no body found in the image (nothing above -190 HU): empty segmentation")
    compute["network_grid"] = list(shape)
    compute["network_box"] = [[b.start, b.stop] for b in box] if box is not None else None
    return p1, p2, compute


def segment(
    image: sitk.Image,
    loaded: Any,
    options: Optional[SegmentOptions] = None,
    progress: Union[None, ProgressReporter, Callable[[ProgressEvent], Any]] = None,
    input_path: Optional[str] = None,
) -> SegmentationResult:
    """Segment ``image`` (a CT in HU) with ``loaded`` (weights.LoadedModel).

    Raises InputError for an unusable image and Cancelled when the progress callback asks.
    """
    from .image_io import validate_ct

    opts = (options or SegmentOptions()).for_model(getattr(loaded, "metadata", None))
    reporter = as_reporter(progress)
    timings: dict[str, float] = {}
    notes: list[str] = []
    t_start = time.perf_counter()

    reporter.report("preprocess", 0.0, "checking the image")
    validate_ct(image)
    device = resolve_device(opts.device)
    previous_threads = torch.get_num_threads()
    set_cpu_threads(opts.threads)  # CPU inference, and CPU-side blending on any device
    try:
        if getattr(loaded, "kind", None) == "two_stage":  # locator + segmenter bundle (weights.TwoStageModel)
            from .inferers.two_stage import segment_two_stage

            return segment_two_stage(image, loaded, opts, reporter, device, input_path, timings, notes, t_start)
        return _segment(image, loaded, opts, reporter, device, input_path, timings, notes, t_start)
    finally:
        torch.set_num_threads(previous_threads)


def _segment(image, loaded, opts, reporter, device, input_path, timings, notes, t_start) -> SegmentationResult:
    from .preprocessing import preprocess_image
    from .report import build_report

    t = time.perf_counter()
    prepared = preprocess_image(image, loaded.preprocessing)
    timings["preprocess"] = time.perf_counter() - t
    reporter.report("preprocess", 1.0, f"network grid {tuple(prepared.array.shape)}")

    t = time.perf_counter()
    net_spacing_zyx = tuple(float(v) for v in prepared.grid.GetSpacing()[::-1])
    p1, p2, compute = predict_network_grid(loaded.model, prepared.array, net_spacing_zyx, opts, device,
                                           reporter, notes)
    timings["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.report("restore", 0.0, "back to the input grid")
    # Softmax sums to one and the blending/interpolation are convex combinations, so the
    # background channel is 1 - p1 - p2: only the liver and tumour channels travel back.
    probabilities = None
    if opts.return_probabilities:
        back = resample_probabilities(np.stack([p1, p2]), prepared.network, prepared.source)
        labels = labels_from_probabilities(back[0], back[1], opts.tumour_threshold)
        probabilities = np.stack([np.clip(1.0 - back[0] - back[1], 0.0, 1.0), back[0], back[1]]).astype(np.float32)
        input_probs = (probabilities[1], probabilities[2])  # for the report (confidence, quality)
        del back
    else:
        labels, input_probs = restore_labels(p1, p2, prepared.network, prepared.source, crop=True,
                                             keep_probabilities=True, tumour_threshold=opts.tumour_threshold)
    del p1, p2
    timings["restore"] = time.perf_counter() - t
    reporter.report("restore", 1.0)

    t = time.perf_counter()
    reporter.report("postprocess", 0.0, "cleaning up")
    spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
    labels, pp_info = postprocess_labels(labels, spacing_zyx, opts.postprocess)
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    timings["postprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    report = build_report(
        labelmap,
        model=loaded,
        device=compute["device"],
        timings=timings,
        postprocessing=pp_info,
        notes=notes,
        input_path=input_path,
        extra={"compute": compute, "options": opts.to_dict()},
        probabilities=input_probs,  # (P(liver), P(tumour)) on the input grid
    )
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    reporter.report("postprocess", 1.0, "done")
    return SegmentationResult(labelmap=labelmap, report=report, timings=timings, probabilities=probabilities,
                              input_probabilities=input_probs)
