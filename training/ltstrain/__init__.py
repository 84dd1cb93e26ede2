"""Helper package of the training scripts (``training/prepare.py``, ``train.py``, ``reproduce.py``).

Modules:

- :mod:`ltstrain.cache`: preprocess a data set once into a cache of ``.npy`` arrays with a
  manifest (checksums, preprocessing, shapes, spacing, liver slice ranges, the split);
  synthetic cases.
- :mod:`ltstrain.data`: the training dataset (48 consecutive liver slices, in-plane crops,
  augmentation) and deterministic per-sample random streams.
- :mod:`ltstrain.config`: :class:`TrainConfig`, the JSON-serialisable training recipe.
- :mod:`ltstrain.trainer`: the training loop (validation, checkpoints, resume, AMP, DDP, logs).
- :mod:`ltstrain.ddp`: torch.distributed helpers (torchrun or spawn; gloo on CPU).
- :mod:`ltstrain.evaluation`: sliding-window prediction of cached volumes and metrics.
- :mod:`ltstrain.experiments`: the paper's experiments (tables 1-5, figures 5-11).
- :mod:`ltstrain.tables`, :mod:`ltstrain.figures`, :mod:`ltstrain.paper`: writers and the
  paper's reported numbers.
- :mod:`ltstrain.profiling`: parameters, FLOPs, inference time and memory.
"""
from __future__ import annotations

TRAINING_DIR_NOTE = "training/ is a folder of scripts; add it to sys.path to import ltstrain"
