"""Batch segmentation of an archive: cases, a resumable manifest, local and Ray executors.

``run_batch(cases, out_dir, settings)`` segments every case with the same per-case function
(:func:`worker.process_case`) in this process, in ``workers`` local processes, or as Ray
tasks on a cluster; the driver writes each case's outputs and manifest entry as its result
arrives, then the summary table.
"""
from .cases import Case, discover_cases
from .manifest import Manifest, fingerprint
from .runner import BatchResult, BatchSettings, run_batch

__all__ = ["Case", "discover_cases", "Manifest", "fingerprint", "BatchSettings", "BatchResult", "run_batch"]
