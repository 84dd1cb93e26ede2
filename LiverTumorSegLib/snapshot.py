"""A PNG overview of a segmentation: axial, coronal and sagittal views with outlines.

Used by ``livertumorseg demo`` and handy after a batch run: a quick look that the liver (green
outline) and tumours (yellow outline) sit where they should, without opening a viewer. Views
are cut through the centre of the liver region (or of the volume when there is no liver), and
drawn with the physical aspect ratio so anisotropic voxels do not distort anatomy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

LIVER_COLOUR = "#3cb44b"
TUMOUR_COLOUR = "#ffe119"
REFERENCE_COLOUR = "#f032e6"


def _to_lps_axis_aligned(image: sitk.Image, labelmap: sitk.Image, reference: Optional[sitk.Image]):
    """Reorient to an LPS axis-aligned grid so that 'axial' means axial whatever the input direction."""
    orient = sitk.DICOMOrientImageFilter()
    orient.SetDesiredCoordinateOrientation("LPS")
    out = [orient.Execute(image), orient.Execute(labelmap)]
    out.append(orient.Execute(reference) if reference is not None else None)
    return out


def save_overview_png(
    image: sitk.Image,
    labelmap: sitk.Image,
    path: str | Path,
    reference: Optional[sitk.Image] = None,
    title: str = "",
    window: tuple[float, float] = (-160.0, 240.0),
) -> Path:
    """Write a 1x3 PNG (axial, coronal, sagittal) with liver/tumour outlines; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, labelmap, reference = _to_lps_axis_aligned(image, labelmap, reference)
    ct = sitk.GetArrayFromImage(image).astype(np.float32)  # z, y, x
    lab = sitk.GetArrayFromImage(labelmap)
    ref = sitk.GetArrayFromImage(reference) if reference is not None else None
    sx, sy, sz = image.GetSpacing()

    region = lab >= 1
    if region.any():
        cz, cy, cx = (int(round(c.mean())) for c in np.nonzero(region))
        tum = lab == 2
        if tum.any():  # cut through the largest tumour burden slice so tumours show
            cz = int(np.argmax(tum.sum(axis=(1, 2))))
    else:
        cz, cy, cx = (s // 2 for s in lab.shape)

    views = [
        ("axial", ct[cz], lab[cz], None if ref is None else ref[cz], sy / sx),
        ("coronal", ct[:, cy, :][::-1], lab[:, cy, :][::-1], None if ref is None else ref[:, cy, :][::-1], sz / sx),
        ("sagittal", ct[:, :, cx][::-1], lab[:, :, cx][::-1], None if ref is None else ref[:, :, cx][::-1], sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), facecolor="black")
    for ax, (name, img, seg, rseg, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="bilinear")
        if rseg is not None and (rseg >= 1).any():
            ax.contour(rseg >= 1, levels=[0.5], colors=REFERENCE_COLOUR, linewidths=0.8, linestyles="dashed")
        if (seg >= 1).any():
            ax.contour(seg >= 1, levels=[0.5], colors=LIVER_COLOUR, linewidths=1.2)
        if (seg == 2).any():
            ax.contour(seg == 2, levels=[0.5], colors=TUMOUR_COLOUR, linewidths=1.2)
        ax.set_title(name, color="white")
        ax.axis("off")
    legend = "green: liver   yellow: tumour" + ("   dashed magenta: reference liver" if ref is not None else "")
    fig.suptitle((title + "\n" if title else "") + legend, color="white")
    fig.tight_layout()
    from .utils.files import atomic_write

    path = Path(path)
    try:
        with atomic_write(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=90, facecolor="black", format="png")
    finally:
        plt.close(fig)
    return path
