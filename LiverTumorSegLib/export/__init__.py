"""Exports to the formats hospital systems take: DICOM Segmentation and Structured Report.

Built with highdicom (the field's library for DICOM SEG and SR); nothing here hand-encodes
DICOM. ``dicom_seg`` writes the label map as a SEG on the source series' slices,
``dicom_sr`` the report as a TID 1500 measurement report referencing that SEG.
"""
