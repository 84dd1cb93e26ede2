"""Synthetic CT with known liver and tumour labels, for training and tests.

Roles (like MONAI's subpackages):
- ``procedural``: a shape-based abdominal phantom defined in physical space (``make_synthetic_ct``);
- ``templates``: real anatomy from a multi-label template scan, deformed at random
  (``Template``, ``make_template_case``), and whole-field-of-view cases (``make_wholefov_case``)
  with a procedural chest (heart, great vessels), bowel contents, liver vessels per phase;
- ``anatomy``: procedural structures added to a template (heart, aorta, liver vessels ...);
- ``tumours``: lesions inserted into the liver (Hu et al. CVPR 2023 recipe);
- ``scanner``: acquisition grids, slice thickness, blur and noise.
"""
from .procedural import BASE_HU, MAX_TUMOURS, TUMOUR_KINDS, SyntheticCase, make_synthetic_ct
from .templates import HU_RANGES, PHASES, Template, TemplateCase, make_template_case
from .wholefov import make_wholefov_case

__all__ = [
    "BASE_HU", "HU_RANGES", "MAX_TUMOURS", "PHASES", "SyntheticCase", "TUMOUR_KINDS", "Template", "TemplateCase",
    "make_synthetic_ct", "make_template_case", "make_wholefov_case",
]
