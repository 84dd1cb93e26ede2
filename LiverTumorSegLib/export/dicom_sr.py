"""DICOM Structured Report (TID 1500 "Measurement Report") of a segmentation report.

Content (codes from the DICOM/SNOMED CT vocabularies highdicom and pydicom ship):

* "Liver" group (TID 1411 volumetric ROI, references segment 1 "Liver" of the SEG):
  Volume of that segment = ``liver_parenchyma_volume_ml`` (label 1, tumours excluded, as the
  segment itself).
* "Liver region" group (TID 1501, finding site Liver; the region is segments 1 + 2):
  Volume = ``liver_volume_ml`` (liver including tumours, the report's liver volume) and
  Number of lesions = ``tumour_count``.
* One group per tumour (TID 1411, references segment 2 "Liver tumor"; tracking identifier
  "Liver tumor <id>" with the id of the JSON report, largest first): Volume (mL), Diameter
  with derivation Maximum (mm), and Certainty of Finding when the report's tumour entry has a
  numeric ``confidence``.

The SR is a Comprehensive 3D SR whose evidence is the SEG and the source slices; the observer
is the algorithm (a device), with its model name, version and sha256.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

from .dicom_seg import MANUFACTURER, MANUFACTURER_MODEL, SR_SERIES_NUMBER, code, write_dicom_seg


def _units():
    from pydicom.sr.coding import Code

    return {
        "mL": Code("mL", "UCUM", "milliliter"),
        "mm": Code("mm", "UCUM", "millimeter"),
        "1": Code("1", "UCUM", "no units"),
    }


def _algorithm(identity: Mapping[str, Any]):
    import highdicom as hd

    from .. import __version__

    return hd.sr.AlgorithmIdentification(
        name=str(identity.get("name") or MANUFACTURER_MODEL)[:64],
        version=str(identity.get("version") or __version__)[:64],
        parameters=[f"model_sha256={identity.get('sha256') or ''}", f"software=LiverTumorSegLib {__version__}"],
    )


def _referenced_segment(seg, number: int):
    import highdicom as hd

    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=int(number),
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
    )


def build_measurement_report(report: Mapping[str, Any], seg, sources: Sequence, identity: Mapping[str, Any]):
    """highdicom ``Comprehensive3DSR`` of ``report`` (the JSON report dict) referencing ``seg``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__, terminology

    units = _units()
    algo = _algorithm(identity)
    liver_site = [hd.sr.FindingSite(code(terminology.LIVER_CODE))]
    liver, tumour = terminology.SEGMENTS_BY_LABEL[1], terminology.SEGMENTS_BY_LABEL[2]

    def measurement(name, value, unit, derivation=None):
        return hd.sr.Measurement(name=name, value=float(value), unit=units[unit], derivation=derivation,
                                 algorithm_id=algo)

    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=liver.name),
            referenced_segment=_referenced_segment(seg, liver.label),
            finding_type=code(liver.type),
            finding_sites=liver_site,
            algorithm_id=algo,
            measurements=[measurement(codes.SCT.Volume, report.get("liver_parenchyma_volume_ml", 0.0), "mL")],
        ),
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"Liver region ({liver.name} + {tumour.name})"),
            finding_type=code(liver.type),
            finding_sites=liver_site,
            algorithm_id=algo,
            measurements=[
                measurement(codes.SCT.Volume, report.get("liver_volume_ml", 0.0), "mL"),
                measurement(codes.SCT.NumberOfLesions, int(report.get("tumour_count", 0)), "1"),
            ],
        ),
    ]
    for t in report.get("tumours") or []:
        ms = [
            measurement(codes.SCT.Volume, t["volume_ml"], "mL"),
            measurement(codes.SCT.Diameter, t["max_diameter_mm"], "mm", derivation=codes.SCT.Maximum),
        ]
        conf = t.get("confidence")
        if isinstance(conf, numbers.Real) and not isinstance(conf, bool):
            ms.append(measurement(codes.DCM.CertaintyOfFinding, conf, "1"))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{tumour.name} {t['id']}"),
            referenced_segment=_referenced_segment(seg, tumour.label),
            finding_type=code(tumour.type),
            finding_sites=liver_site,
            algorithm_id=algo,
            measurements=ms,
        ))
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name=MANUFACTURER_MODEL, manufacturer_name=MANUFACTURER,
                model_name=str(identity.get("name") or MANUFACTURER_MODEL)[:64],
            ),
        )
    )
    content = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="LiverTumorSeg measurements (research use only)",
        is_complete=True,
        is_final=False,
        is_verified=False,
        software_versions=str(__version__),
    )


def write_dicom_sr(sr, path, overwrite: bool = False) -> Path:
    """Save the SR atomically."""
    return write_dicom_seg(sr, path, overwrite)
