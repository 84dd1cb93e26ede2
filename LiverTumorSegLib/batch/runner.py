"""Run a batch: decide which cases to do, run them (here, local processes or Ray), write results.

The driver alone writes into the output folder: for each result, as it arrives, the case's
files (atomically, replacing an older result of the same case) and its manifest entry; at
the end the summary table ``summary.csv`` (and ``summary.parquet`` when pyarrow is installed),
one row per case in input order.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from ..errors import ConfigError, InputError
from ..utils.files import atomic_write_bytes, atomic_write_text
from .cases import Case
from .manifest import Manifest, fingerprint
from .worker import process_case, summary_row

SUMMARY_COLUMNS = ("case_id", "input", "status", "error", "seconds", "liver_ml", "tumour_count", "tumour_ml",
                   "burden_pct", "quality", "model_sha256")
#: Columns that depend on timing, not on the result (differ between runs and executors).
TIMING_COLUMNS = ("seconds",)


@dataclass
class BatchSettings:
    model: Optional[str] = None  # weights path; None = the bundled default
    device: str = "auto"
    options: dict = field(default_factory=dict)  # SegmentOptions fields (device and threads set here)
    labelmap_ext: str = ".nii.gz"
    dicom_seg: bool = False
    dicom_sr: bool = False
    workers: int = 1
    threads: Optional[int] = None  # torch threads per case; None = CPUs / workers
    ray: Optional[str] = None  # Ray address ("auto", "ray://host:10001", ...) or None for local
    progress: str = "bar"  # bar | jsonl | none


@dataclass
class BatchResult:
    rows: list
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    summary_csv: Optional[Path] = None
    summary_parquet: Optional[Path] = None

    @property
    def exit_code(self) -> int:
        return 1 if any(r["status"] != "done" for r in self.rows) else 0


def _options_key(settings: BatchSettings) -> dict:
    """What changes a case's result (threads and executors do not)."""
    key = {"segment": {k: v for k, v in settings.options.items() if k not in ("threads",)},
           "device": settings.device, "labelmap_ext": settings.labelmap_ext,
           "dicom_seg": settings.dicom_seg, "dicom_sr": settings.dicom_sr}
    return json.loads(json.dumps(key, sort_keys=True))  # as stored in the manifest (tuples -> lists)


def _default_threads(workers: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


# ------------------------------------------------------------------------------ executors
def _failed(task: dict, message: str) -> dict:
    """The result of a case whose worker died (no result came back)."""
    msg = " ".join(message.split())[:300]
    return {"case_id": task["case_id"], "status": "failed", "error": msg, "seconds": 0.0, "files": {},
            "row": summary_row(task["case_id"], task["path"], "failed", msg, 0.0, None, task.get("model_sha256", ""))}


def _run_inline(tasks: list[dict]) -> Iterator[dict]:
    for t in tasks:
        yield process_case(t)


def _run_processes(tasks: list[dict], workers: int, threads: int) -> Iterator[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .worker import init_worker

    # spawn: a fresh interpreter per worker (fork after torch/OpenMP started is unsafe)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(process_case, t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    yield f.result()
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - a worker killed (e.g. out of memory) fails its case
                    yield _failed(futures[f], f"worker process failed: {type(exc).__name__}: {exc}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ray_module():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'LiverTumorSegLib[cluster]' (or pip install ray)") from None
    return ray


def ray_connect(address: str) -> bool:
    """Connect to the Ray cluster at ``address`` unless already connected; True if we connected."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - no cluster there, wrong address, version mismatch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {first}") from None
    return True


def _run_ray(tasks: list[dict], threads: Optional[int]) -> Iterator[dict]:
    ray = ray_module()
    pending: list = []
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        remote = ray.remote(num_cpus=threads or 1, num_gpus=1 if gpus >= 1 else 0, max_retries=0)(process_case)
        refs = {}
        for t in tasks:
            t = dict(t)
            if gpus >= 1 and t.get("device") == "auto":
                t["options"] = {**t["options"], "device": "cuda"}
            t["options"] = {**t["options"], "threads": threads or 1}
            refs[remote.remote(t)] = t
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker or node fails its case only
                    yield _failed(refs[ref], f"Ray task failed: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


# ------------------------------------------------------------------------------ progress
class _Progress:
    def __init__(self, mode: str, total: int, already: int) -> None:
        self.mode, self.total = mode, total
        self.done = already
        self.failed = 0
        self.t0 = time.monotonic()
        self.n_run = 0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=already, file=sys.stderr, unit="case", dynamic_ncols=True)
            self.bar.set_postfix_str("failed 0", refresh=True)
        self._emit({"event": "start", "total": total, "skipped": already})

    def _emit(self, obj: dict) -> None:
        if self.mode == "jsonl":
            sys.stdout.write(json.dumps(obj, default=str) + "\n")
            sys.stdout.flush()

    def case(self, result: dict, remaining: int) -> None:
        self.done += 1
        self.n_run += 1
        self.failed += result["status"] != "done"
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.n_run * remaining
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"failed {self.failed}", refresh=True)
        self._emit({"event": "case", "case_id": result["case_id"], "status": result["status"],
                    "error": result["error"], "seconds": round(result["seconds"], 3), "done": self.done,
                    "failed": self.failed, "total": self.total, "eta_s": round(eta, 1)})

    def close(self, result: "BatchResult") -> None:
        if self.bar is not None:
            self.bar.close()
        self._emit({"event": "done", "total": self.total, "processed": result.processed, "skipped": result.skipped,
                    "failed": result.failed, "summary_csv": str(result.summary_csv)})


# ------------------------------------------------------------------------------ driver
def _write_case(out_dir: Path, result: dict) -> dict:
    """Write a finished case's files into ``out_dir/<case_id>/``; returns {name: relative path}."""
    folder = out_dir / result["case_id"]
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, data in result["files"].items():
        atomic_write_bytes(folder / name, data, overwrite=True)
        outputs[name] = str(Path(result["case_id"]) / name)
    return outputs


def write_summary(out_dir: Path, rows: list[dict]) -> tuple[Path, Optional[Path]]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_COLUMNS})
    csv_path = atomic_write_text(out_dir / "summary.csv", buf.getvalue(), overwrite=True)
    parquet = None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return csv_path, None
    from ..utils.files import atomic_write

    table = pa.Table.from_pylist([{k: r.get(k) for k in SUMMARY_COLUMNS} for r in rows])
    with atomic_write(out_dir / "summary.parquet", overwrite=True) as tmp:
        pq.write_table(table, str(tmp))
    parquet = out_dir / "summary.parquet"
    return csv_path, parquet


def run_batch(cases: list[Case], out_dir, settings: BatchSettings) -> BatchResult:
    """Segment ``cases`` into ``out_dir`` (resumable; see the module docstring)."""
    from ..utils.files import sha256_file
    from ..weights import resolve_weights_path

    if settings.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {settings.workers}")
    if settings.dicom_sr and not settings.dicom_seg:
        raise ConfigError("a DICOM SR needs the DICOM SEG it references (ask for both)")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"batch output {out_dir} is not a folder")
    if settings.ray is not None:
        ray_module()  # one-line error now when Ray is missing
    weights = resolve_weights_path(settings.model)
    if not weights.is_file():
        raise InputError(f"model weights not found: {weights}")
    model_sha = sha256_file(weights)
    manifest = Manifest(out_dir)
    key = _options_key(settings)
    threads = settings.threads or _default_threads(1 if settings.ray else settings.workers)
    seg_opts = {**settings.options, "device": settings.device, "threads": threads}

    tasks, fps = [], {}
    for c in cases:
        try:
            fp = fingerprint(c.path)
        except OSError as exc:
            fp = {"kind": "missing", "error": exc.strerror or str(exc)}
        fps[c.case_id] = fp
        if fp.get("kind") != "missing" and manifest.is_finished(c.case_id, fp, model_sha, key):
            continue
        tasks.append({**c.to_dict(), "model": None if settings.model is None else str(weights),
                      "model_sha256": model_sha, "device": settings.device, "options": seg_opts,
                      "labelmap_ext": settings.labelmap_ext, "dicom_seg": settings.dicom_seg,
                      "dicom_sr": settings.dicom_sr})
    # one-line error before anything is written when the cluster cannot be reached
    ray_started = bool(tasks) and settings.ray is not None and ray_connect(settings.ray)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if ray_started:
            ray_module().shutdown()
        raise InputError(f"cannot create the batch output folder {out_dir}: {exc.strerror or exc}") from None
    result = BatchResult(rows=[], skipped=len(cases) - len(tasks))
    progress = _Progress(settings.progress, len(cases), result.skipped)
    by_id = {c.case_id: c for c in cases}
    try:
        if not tasks:
            stream: Iterable[dict] = iter(())
        elif settings.ray is not None:
            stream = _run_ray(tasks, settings.threads)
        elif settings.workers > 1 and len(tasks) > 1:
            stream = _run_processes(tasks, min(settings.workers, len(tasks)), threads)
        else:
            stream = _run_inline(tasks)
        remaining = len(tasks)
        for res in stream:
            remaining -= 1
            c = by_id[res["case_id"]]
            entry = {"case": c.to_dict(), "fingerprint": fps[c.case_id], "model_sha256": model_sha, "options": key,
                     "status": res["status"], "error": res["error"], "seconds": round(res["seconds"], 3),
                     "row": res["row"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if res["status"] == "done":
                try:
                    entry["outputs"] = _write_case(out_dir, res)
                except Exception as exc:  # noqa: BLE001 - e.g. disk full: this case fails, the batch goes on
                    entry.update(status="failed", error=" ".join(str(exc).split()))
                    entry["row"] = {**res["row"], "status": "failed", "error": entry["error"]}
                    res = {**res, "status": "failed"}
            manifest.record(c.case_id, entry)
            result.processed += 1
            result.failed += entry["status"] != "done"
            progress.case(res, remaining)
    finally:
        if ray_started:
            ray_module().shutdown()
        rows = []
        for c in cases:
            e = manifest.get(c.case_id)
            if e is not None and e.get("fingerprint") == fps[c.case_id] and e.get("model_sha256") == model_sha \
                    and e.get("options") == key:
                rows.append(e["row"])
            else:
                rows.append(summary_row(c.case_id, c.path, "pending", "", 0.0, None, model_sha))
        result.rows = rows
        result.summary_csv, result.summary_parquet = write_summary(out_dir, rows)
    progress.close(result)
    return result
