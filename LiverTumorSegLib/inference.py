"""Segment one CT volume: preprocess, sliding-window network, back to the input grid, clean up.

``segment(image, loaded, options, progress)`` walks the corridor of the architecture notes:

    validate -> preprocess (network grid) -> sliding-window softmax (MONAI, Gaussian blending,
    inference mode) -> probabilities back on the input grid -> argmax -> post-process -> report

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from .device import empty_cache, is_oom, resolve_device, set_cpu_threads
from .errors import LiverTumorSegError
from .postprocess import PostprocessOptions, postprocess_labels
from .progress import ProgressEvent, ProgressReporter

# Share of the whole run per phase (the command line adds read/write around segment()).
PHASE_WEIGHTS = {"read": 0.04, "preprocess": 0.08, "inference": 0.74, "restore": 0.07, "postprocess": 0.04,
                 "write": 0.03}


DEFAULT_WINDOW = (48, 256, 256)


@dataclass
class SegmentOptions:
    """How to run the network and which clean-up steps to apply.

    ``window`` is the sliding window in network voxels (D, H, W) on the preprocessed grid
    (1 mm slices, half in-plane resolution by default): 48 slices like the paper's training
    crops, and 256 x 256 in plane, which covers a whole 512 x 512 CT slice after the 2x
    in-plane down-sampling so that windows overlap only along z. Each window dimension is
    clipped to the volume (a 3-slice CT runs one small window, not a padded one).
    ``fast`` lowers the overlap to 0 (each voxel predicted once; faster, may show seams).
    ``crop_to_body`` runs the network only on the bounding box of the body (voxels above
    -190 HU, plus a margin); outside it is background. On abdominal CT this skips 30-50 % of
    the network grid (the air around the patient).
    """

    window: Optional[tuple[int, int, int]] = None  # None: the model's own (sidecar), else DEFAULT_WINDOW
    overlap: float = 0.25
    sw_batch_size: int = 1
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    device: str = "auto"
    amp: bool = True  # float16 autocast, CUDA only
    fast: bool = False
    threads: Optional[int] = None  # torch CPU threads; None = torch default capped to usable CPUs
    channels_last: bool = False
    crop_to_body: bool = True  # run the network only on the bounding box of the body (HU > -190)
    largest_liver_component: bool = True
    tumour_inside_liver: bool = True
    min_tumour_volume_ml: float = 0.1
    fill_holes: bool = True
    return_probabilities: bool = False

    def __post_init__(self) -> None:
        if self.window is None:
            return self._check()
        self.window = tuple(int(w) for w in self.window)  # type: ignore[assignment]
        if len(self.window) != 3 or any(w < 1 for w in self.window):
            raise LiverTumorSegError(f"window must be three positive sizes (D H W), got {self.window}")
        self._check()

    def _check(self) -> None:
        if not 0.0 <= float(self.overlap) < 1.0:
            raise LiverTumorSegError(f"overlap must be in [0, 1), got {self.overlap}")
        if int(self.sw_batch_size) < 1:
            raise LiverTumorSegError(f"batch size must be >= 1, got {self.sw_batch_size}")
        if self.mode not in ("gaussian", "constant"):
            raise LiverTumorSegError(f"mode must be 'gaussian' or 'constant', got {self.mode!r}")
        if self.min_tumour_volume_ml < 0 or not math.isfinite(self.min_tumour_volume_ml):
            raise LiverTumorSegError(f"minimum tumour volume must be >= 0 mL, got {self.min_tumour_volume_ml}")

    def for_model(self, metadata: Optional[dict]) -> "SegmentOptions":
        """A copy whose window is the user's, else the model's recommended one, else the default.

        A model trained on small patches predicts best on windows of that size (instance
        normalisation and the Mamba sequence see what they saw in training), so its sidecar
        may carry ``inference.window``.
        """
        if self.window is not None:
            return self
        window = ((metadata or {}).get("inference") or {}).get("window") or DEFAULT_WINDOW
        return replace(self, window=tuple(int(w) for w in window))

    @property
    def effective_overlap(self) -> float:
        return 0.0 if self.fast else float(self.overlap)

    def postprocess_options(self) -> PostprocessOptions:
        return PostprocessOptions(
            largest_liver_component=self.largest_liver_component,
            tumour_inside_liver=self.tumour_inside_liver,
            fill_holes=self.fill_holes,
            min_tumour_volume_ml=float(self.min_tumour_volume_ml),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = None if self.window is None else list(self.window)
        return d


@dataclass
class SegmentationResult:
    labelmap: sitk.Image  # uint8, 0 background / 1 liver / 2 tumour, on the input grid
    report: dict
    timings: dict = field(default_factory=dict)
    probabilities: Optional[np.ndarray] = None  # (3, z, y, x) float32 on the input grid, if asked


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
    roi = tuple(min(w, s) for w, s in zip(options.window or DEFAULT_WINDOW, shape))
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
                    "window": list(roi), "overlap": overlap, "windows": total}
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


def argmax_labels(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """argmax over (1 - p1 - p2, p1, p2) without building the background channel."""
    p0 = 1.0 - p1 - p2
    lab = np.zeros(p1.shape, dtype=np.uint8)
    lab[(p1 > p0) & (p1 >= p2)] = 1
    lab[(p2 > p0) & (p2 > p1)] = 2
    return lab

BODY_THRESHOLD = 0.025  # preprocessed value (HU window [-200, 200] -> [0, 1]): about -190 HU
BODY_MARGIN_MM = (5.0, 15.0, 15.0)  # (z, y, x) kept around the body's bounding box


def _bbox(mask: np.ndarray, margin) -> Optional[tuple[slice, ...]]:
    """Bounding box of a (z, y, x) mask grown by ``margin`` per axis (None when empty)."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        m = int(margin[axis])
        out.append(slice(max(0, int(nz[0]) - m), min(mask.shape[axis], int(nz[-1]) + 1 + m)))
    return tuple(out)


def body_box(array: np.ndarray, spacing_zyx, threshold: float = BODY_THRESHOLD,
             margin_mm=BODY_MARGIN_MM) -> Optional[tuple[slice, ...]]:
    """Network-grid box (z, y, x slices) around everything denser than air/lung (None: no body)."""
    margin = [int(math.ceil(m / float(s))) for m, s in zip(margin_mm, spacing_zyx)]
    return _bbox(array > threshold, margin)


def _sub_geometry(geo, start_zyx, shape_zyx):
    """The Geometry of a sub-box (start and shape in array (z, y, x) order) of ``geo``."""
    from .geometry import Geometry

    start_ijk = np.asarray(start_zyx[::-1], dtype=float)
    origin = geo.index_to_physical(start_ijk)[0]
    return Geometry(size=tuple(int(v) for v in shape_zyx[::-1]), spacing=geo.spacing,
                    origin=tuple(float(v) for v in origin), direction=geo.direction)


class _Grids:
    """Duck-typed PreparedImage for probabilities_to_input_grid (a grid and a source)."""

    def __init__(self, grid, source) -> None:
        self.grid = grid
        self.source = source


def restore_labels(p1: np.ndarray, p2: np.ndarray, prepared, crop: bool = True) -> np.ndarray:
    """Liver/tumour probabilities on the network grid -> argmax labels (z, y, x) on the input grid.

    With ``crop``, only the part of the input grid near network voxels where background is
    not certain (p0 < 0.5) is interpolated: elsewhere every interpolated p0 is >= 0.5 (linear
    interpolation is a convex combination), so the argmax there is background anyway. Gives
    exactly the labels of the full interpolation at a fraction of the cost.
    """
    from .geometry import Geometry
    from .preprocessing import probabilities_to_input_grid

    source = prepared.source
    out = np.zeros(source.shape_zyx, dtype=np.uint8)
    if not crop:
        back = probabilities_to_input_grid(np.stack([p1, p2]), prepared)
        return argmax_labels(back[0], back[1])
    box = _bbox((p1 + p2) > 0.5, (2, 2, 2))
    if box is None:
        return out
    net = Geometry.from_image(prepared.grid)
    start = [b.start for b in box]
    shape = [b.stop - b.start for b in box]
    sub_net = _sub_geometry(net, start, shape)
    # input voxels whose centres fall inside the sub-box (+1 voxel), via its physical corners
    lo = np.asarray(start[::-1], float) - 1.0
    hi = np.asarray([b.stop for b in box][::-1], float)
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1)
                        for c in (0, 1)])
    idx = source.physical_to_index(net.index_to_physical(corners))
    i0 = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    i1 = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.asarray(source.size))
    if np.any(i1 <= i0):
        return out
    in_start, in_shape = tuple(i0[::-1]), tuple((i1 - i0)[::-1])
    sub_src = _sub_geometry(source, in_start, in_shape)
    sl = tuple(slice(a, a + n) for a, n in zip(in_start, in_shape))
    back = probabilities_to_input_grid(np.stack([p1[box], p2[box]]), _Grids(sub_net, sub_src))
    out[sl] = argmax_labels(back[0], back[1])
    return out



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
    from .preprocessing import preprocess_image, probabilities_to_input_grid
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
        back = probabilities_to_input_grid(np.stack([p1, p2]), prepared)
        labels = argmax_labels(back[0], back[1])
        probabilities = np.stack([np.clip(1.0 - back[0] - back[1], 0.0, 1.0), back[0], back[1]]).astype(np.float32)
        del back
    else:
        labels = restore_labels(p1, p2, prepared, crop=True)
    del p1, p2
    timings["restore"] = time.perf_counter() - t
    reporter.report("restore", 1.0)

    t = time.perf_counter()
    reporter.report("postprocess", 0.0, "cleaning up")
    spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
    labels, pp_info = postprocess_labels(labels, spacing_zyx, opts.postprocess_options())
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
    )
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    reporter.report("postprocess", 1.0, "done")
    return SegmentationResult(labelmap=labelmap, report=report, timings=timings, probabilities=probabilities)
