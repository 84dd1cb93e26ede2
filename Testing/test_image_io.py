"""Reading (files, DICOM series), validation and atomic label-map writing."""
from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import image_io, terminology
from LiverTumorSegLib.errors import InputError, OutputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_utils import write_dicom_series  # noqa: E402
from mrml_fixture import mrml  # noqa: E402,F401  (pytest fixture)

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def _oblique(ax=0.35, az=0.5):
    ca, sa, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def _ct(shape_zyx=(6, 20, 24), spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, -300.0), direction=IDENTITY, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _labels(shape_zyx=(6, 20, 24), spacing=(0.7, 0.8, 2.5), origin=(1.5, 2.5, -3.25), direction=IDENTITY):
    arr = np.zeros(shape_zyx, np.uint8)
    arr[1:5, 3:15, 4:20] = 1
    arr[2:4, 6:9, 8:12] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _assert_same_grid(a: sitk.Image, b: sitk.Image, atol=1e-4):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol, rtol=0)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and "itk::" not in msg and "Traceback" not in msg, msg
    return msg


# ============================================================================ real data
def test_real_dicom_series_matches_nifti(shared_data):
    folder = shared_data / "totalseg_example_dicom"
    dcm, info = image_io.read_image_with_info(folder / "dicom")
    ref = image_io.read_image(folder / "ct.nii.gz")  # NIfTI is RAS on disk; ITK reads it into LPS
    assert dcm.GetPixelID() == sitk.sitkFloat32 and ref.GetPixelID() == sitk.sitkFloat32
    assert dcm.GetSize() == (512, 512, 20)
    _assert_same_grid(dcm, ref, atol=1e-4)
    np.testing.assert_allclose(dcm.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    np.testing.assert_allclose(dcm.GetOrigin(), (-249.51171875, -437.51171875, -804.5), atol=1e-4)
    a, b = sitk.GetArrayViewFromImage(dcm), sitk.GetArrayViewFromImage(ref)
    np.testing.assert_array_equal(a, b)  # rescale intercept -1024 applied, slices in position order
    assert a.min() < -900
    assert info["format"] == "dicom" and info["series"]["n_slices"] == 20 and info["series"]["modality"] == "CT"
    # one file of the series as input reads the whole series
    one = sorted((folder / "dicom").iterdir())[7]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image_io.read_image(one)), b)
    image_io.validate_ct(dcm)


def test_real_thin_volume_is_valid(shared_data):
    img = image_io.read_image(shared_data / "dcmqi_ct3slice" / "ct.nii.gz")
    assert img.GetSize()[2] == 3
    stats = image_io.validate_ct(img)
    assert stats["min"] < -500


def test_labelmap_formats_round_trip_on_real_grid(shared_data, tmp_path):
    ref = image_io.read_labelmap(shared_data / "totalseg_example_ct_sm" / "label.nii.gz")
    arr = sitk.GetArrayFromImage(ref)
    assert arr.max() == 1 and ref.GetDirection() == (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    zz, yy, xx = np.nonzero(arr)
    c = (int(np.median(zz)), int(np.median(yy)), int(np.median(xx)))
    arr[c[0] - 2:c[0] + 2, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 2  # a "tumour" inside the liver
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(ref)
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"):
        out = tmp_path / f"seg{ext}"
        image_io.write_labelmap(label, out)
        back = image_io.read_labelmap(out)
        _assert_same_grid(back, label, atol=1e-5)
        assert back.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), arr, err_msg=ext)
        if ext != ".seg.nrrd":
            raw = sitk.ReadImage(str(out))  # plain ITK agrees
            _assert_same_grid(raw, label, atol=1e-5)
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(raw), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"seg{e}" for e in (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"))


# ============================================================================ label maps
@pytest.mark.parametrize("direction", [IDENTITY, (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), (0, 0, 1.0, 1.0, 0, 0, 0, 1.0, 0), "oblique"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
def test_labelmap_grid_is_exact(tmp_path, direction, ext):
    d = _oblique() if direction == "oblique" else direction
    label = _labels(direction=d, origin=(12.345678, -98.765432, 432.1))
    out = image_io.write_labelmap(label, tmp_path / f"x{ext}")
    back = image_io.read_labelmap(out)
    _assert_same_grid(back, label, atol=2e-5)  # NIfTI stores geometry in float32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))


def test_seg_nrrd_segments_terminology_colours(tmp_path):
    import slicerio

    label = _labels(direction=_oblique(), origin=(5.0, -6.0, 7.0))
    out = image_io.write_labelmap(label, tmp_path / "case.seg.nrrd")
    seg = slicerio.read_segmentation(str(out))
    segs = {s["name"]: s for s in seg["segments"]}
    assert list(segs) == ["Liver", "Liver tumor"]
    liver, tumour = segs["Liver"], segs["Liver tumor"]
    assert liver["labelValue"] == 1 and tumour["labelValue"] == 2
    assert liver["layer"] == 0 and tumour["layer"] == 0  # non-overlapping, one layer
    assert liver["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
    assert liver["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert tumour["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert tumour["terminology"]["type"] == ["SCT", "4147007", "Mass"]  # in the General Anatomy list
    assert tumour["terminology"]["anatomicRegion"] == ["SCT", "10200004", "Liver"]
    assert "3D Slicer General Anatomy" in liver["terminology"]["contextName"]
    np.testing.assert_allclose(liver["color"], np.array([221, 130, 101]) / 255, atol=1e-5)
    np.testing.assert_allclose(tumour["color"], np.array([144, 238, 144]) / 255, atol=1e-5)
    assert liver["colorAutoGenerated"] is False and liver["nameAutoGenerated"] is False
    # geometry: ijkToLPS = direction * spacing, origin
    m = np.asarray(seg["ijkToLPS"])
    d = np.asarray(label.GetDirection()).reshape(3, 3) * np.asarray(label.GetSpacing())[None, :]
    np.testing.assert_allclose(m[:3, :3], d, atol=1e-9)
    np.testing.assert_allclose(m[:3, 3], label.GetOrigin(), atol=1e-9)
    # voxels in (i, j, k) order; extents are the bounding boxes
    arr = sitk.GetArrayFromImage(label)
    np.testing.assert_array_equal(seg["voxels"], arr.transpose(2, 1, 0))
    assert tumour["extent"] == [8, 11, 6, 8, 2, 3]
    np.testing.assert_array_equal(slicerio.segment_mask(seg, "Liver tumor"), arr.transpose(2, 1, 0) == 2)


def test_seg_nrrd_empty_tumour_segment_still_present(tmp_path):
    import slicerio

    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1:3, 1:4, 2:5] = 1
    img = sitk.GetImageFromArray(arr)
    seg = slicerio.read_segmentation(str(image_io.write_labelmap(img, tmp_path / "a.seg.nrrd")))
    names = [s["name"] for s in seg["segments"]]
    assert names == [terminology.LIVER.name, terminology.LIVER_TUMOR.name]
    assert seg["segments"][1]["extent"] == [0, -1, 0, -1, 0, -1]


# ============================================================================ DICOM
def test_dicom_shuffled_names_two_series_and_rescale(tmp_path):
    folder = tmp_path / "study"
    big = _ct(shape_zyx=(7, 16, 18), seed=1)
    small = _ct(shape_zyx=(4, 16, 18), origin=(0.0, 0.0, 0.0), seed=2)
    write_dicom_series(big, folder, series_uid="1.2.3.100", slope=2.0, intercept=-1000.0, description="big", seed=3, prefix="z")
    write_dicom_series(small, folder, series_uid="1.2.3.200", slope=1.0, intercept=-1024.0, description="small", seed=4, prefix="a")
    (folder / "README.txt").write_text("not dicom")
    series = image_io.list_dicom_series(folder)
    assert [(s.uid, s.n_slices, s.modality, s.description) for s in series] == [
        ("1.2.3.100", 7, "CT", "big"),
        ("1.2.3.200", 4, "CT", "small"),
    ]
    img, info = image_io.read_image_with_info(folder)
    assert info["series"]["uid"] == "1.2.3.100" and info["n_series"] == 2
    assert "1.2.3.100" in info["message"] and "\n" not in info["message"]
    expected = np.round((sitk.GetArrayFromImage(big) + 1000.0) / 2.0) * 2.0 - 1000.0  # stored values, rescaled
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), expected)
    _assert_same_grid(img, big, atol=1e-5)
    chosen = image_io.read_image(folder, series_uid="1.2.3.200")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(chosen), sitk.GetArrayViewFromImage(small))
    _assert_same_grid(chosen, small, atol=1e-5)
    with pytest.raises(InputError) as e:
        image_io.read_image(folder, series_uid="9.9.9")
    assert "9.9.9" in _one_line(e) and "1.2.3.100" in str(e.value)


@pytest.mark.parametrize("direction", [(-1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0), "oblique", (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0)])
def test_dicom_geometry_any_orientation_and_per_slice_rescale(tmp_path, direction):
    d = _oblique() if direction == "oblique" else direction
    img = _ct(shape_zyx=(5, 12, 14), direction=d, seed=5)
    slopes = [1.0, 2.0, 1.0, 0.5, 1.0]
    write_dicom_series(img, tmp_path, slope=slopes, intercept=-1024.0)
    back = image_io.read_image(tmp_path)
    _assert_same_grid(back, img, atol=1e-5)
    src = sitk.GetArrayFromImage(img)
    expected = np.stack([np.round((src[k] + 1024) / slopes[k]) * slopes[k] - 1024 for k in range(5)])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), expected)


def test_dicom_gap_and_repeated_positions_are_refused(tmp_path):
    img = _ct(shape_zyx=(6, 8, 8))
    write_dicom_series(img, tmp_path / "gap", slices=[0, 1, 2, 4, 5])
    with pytest.raises(InputError) as e:
        image_io.read_image(tmp_path / "gap")
    assert "spacing" in _one_line(e)
    write_dicom_series(img, tmp_path / "dup", series_uid="1.2.3.4", seed=1)
    write_dicom_series(img, tmp_path / "dup", series_uid="1.2.3.4", seed=2, prefix="b")
    with pytest.raises(InputError) as e:
        image_io.read_image(tmp_path / "dup")
    assert "repeated positions" in _one_line(e)
    write_dicom_series(img, tmp_path / "tilt", shear_mm=0.5)  # ~11 degrees of gantry tilt
    with pytest.raises(InputError) as e:
        image_io.read_image(tmp_path / "tilt")
    assert "tilt" in _one_line(e)


# ============================================================================ bad inputs
def test_bad_paths_and_files(tmp_path):
    cases = []
    cases.append(tmp_path / "missing.nii.gz")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases.append(empty_dir)
    no_dicom = tmp_path / "nodicom"
    no_dicom.mkdir()
    (no_dicom / "a.txt").write_text("hello")
    (no_dicom / "b.dcm").write_bytes(b"\0" * 300)
    cases.append(no_dicom)
    empty_file = tmp_path / "empty.nii.gz"
    empty_file.write_bytes(b"")
    cases.append(empty_file)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(2000))
    cases.append(garbage)
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(_ct(), str(good))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    cases.append(truncated)
    badgz = tmp_path / "badheader.nii.gz"
    badgz.write_bytes(gzip.compress(b"x" * 400))
    cases.append(badgz)
    unsupported = tmp_path / "notes.txt"
    unsupported.write_text("just text")
    cases.append(unsupported)
    messages = []
    for path in cases:
        with pytest.raises(InputError) as e:
            image_io.read_image(path)
        messages.append(_one_line(e))
        assert str(path.name) in messages[-1] or str(path) in messages[-1]
    assert "not found" in messages[0] and "empty" in messages[1] and "no DICOM" in messages[2]


def test_image_structure_errors_on_read(tmp_path):
    two_d = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9), -1000, np.int16)), str(two_d))
    four_d = tmp_path / "four.nii.gz"
    vol = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(four_d))  # a real 4D image (x, y, z, t)
    vec = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(vec))
    for path, word in ((two_d, "2D"), (four_d, "4D"), (vec, "components")):
        with pytest.raises(InputError) as e:
            image_io.read_image(path)
        assert word in _one_line(e)
    # a 4D NIfTI with a single time point is a 3D volume
    one_t = tmp_path / "onet.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([vol]), str(one_t))
    assert image_io.read_image(one_t).GetSize() == (5, 4, 3)


def test_validate_ct_rejections():
    def img(arr, vector=False):
        return sitk.GetImageFromArray(np.asarray(arr), isVector=vector)

    ok = np.full((3, 6, 7), 40.0, np.float32)
    ok[:, 0, :] = -1000
    image_io.validate_ct(img(ok))  # thin (3 slices) is fine
    nan = ok.copy()
    nan[1, 2, 3] = np.nan
    inf = ok.copy()
    inf[0, 0, 0] = np.inf
    cases = {
        "2D": img(ok[0]),
        "4D": sitk.JoinSeries([img(ok), img(ok)]),
        "components": img(np.zeros((3, 4, 5, 2), np.float32), vector=True),
        "single slice": img(ok[:1]),
        "constant": img(np.full((3, 4, 5), -1000.0, np.float32)),
        "NaN": img(nan),
        "infinite": img(inf),
        "Hounsfield": img(np.linspace(0, 1000, 60, dtype=np.float32).reshape(3, 4, 5)),  # MR-like / raw values
        "mask": img((np.arange(60).reshape(3, 4, 5) % 3).astype(np.uint8)),
    }
    for word, image in cases.items():
        with pytest.raises(InputError) as e:
            image_io.validate_ct(image)
        msg = _one_line(e)
        assert word.split()[0].lower() in msg.lower() or (word == "mask" and "hounsfield" in msg.lower()), (word, msg)


# ============================================================================ writing errors
def test_existing_output_is_never_touched(tmp_path):
    label = _labels()
    for ext in (".nii.gz", ".seg.nrrd"):
        out = tmp_path / f"out{ext}"
        out.write_bytes(b"precious")
        before = os.stat(out)
        with pytest.raises(OutputError) as e:
            image_io.write_labelmap(label, out)
        assert "exists" in _one_line(e)
        assert out.read_bytes() == b"precious" and os.stat(out).st_mtime_ns == before.st_mtime_ns
        image_io.write_labelmap(label, out, overwrite=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image_io.read_labelmap(out)),
                                      sitk.GetArrayViewFromImage(label))
        assert (os.stat(out).st_mode & 0o777) == (0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "out.seg.nrrd"]


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_unwritable_and_unsupported_outputs(tmp_path):
    label = _labels()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "dir.nii.gz").mkdir()
    for path, word in (
        (a_file / "out.nii.gz", "not a folder"),
        (tmp_path / "out.png", "unsupported"),
        (tmp_path / "dir.nii.gz", "is a folder"),
    ):
        with pytest.raises(OutputError) as e:
            image_io.write_labelmap(label, path)
        assert word in _one_line(e), _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.nii.gz", "file.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError):
            image_io.write_labelmap(_labels(), ro / "x.nii.gz")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    label = _labels()

    def broken(image, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: disk on fire")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OutputError) as e:
        image_io.write_labelmap(label, tmp_path / "x.nii.gz")
    assert "disk on fire" in _one_line(e)
    assert list(tmp_path.iterdir()) == []
    # and a failure in any atomic_write block (e.g. a report writer) removes the temp file
    with pytest.raises(ZeroDivisionError):
        with image_io.atomic_write(tmp_path / "r.json") as tmp:
            tmp.write_text("{")
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_no_clobber_race(tmp_path):
    dest = tmp_path / "report.json"
    with pytest.raises(OutputError):
        with image_io.atomic_write(dest) as tmp:
            tmp.write_text('{"mine": 1}')
            dest.write_text("someone else's")  # appears while we write
    assert dest.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    image_io.atomic_write_text(dest, "new", overwrite=True)
    assert dest.read_text() == "new"


@pytest.mark.mrml
def test_seg_nrrd_opens_in_real_mrml(tmp_path, mrml):
    """The .seg.nrrd loads into a real vtkMRMLSegmentationNode (slicer-core) as Slicer would."""
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = mrml.slicer
    label = _labels(direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), origin=(5.0, -6.0, 7.0))
    path = image_io.write_labelmap(label, tmp_path / "case.seg.nrrd")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "case")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    arr = sitk.GetArrayFromImage(label)
    for i, info in enumerate(terminology.SEGMENTS):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == info.name
        assert segmentation.GetNthSegmentID(i) == info.id
        entry = segment.GetTerminology() if hasattr(segment, "GetTerminology") else segment.GetTag("TerminologyEntry", "")
        assert f"SCT^{info.type[1]}^{info.type[2]}" in entry, entry
        np.testing.assert_allclose(segment.GetColor(), info.color, atol=1e-5)
        data = segment.GetRepresentation("Binary labelmap")
        voxels = vtk_to_numpy(data.GetPointData().GetScalars())
        assert np.count_nonzero(voxels == segment.GetLabelValue()) == np.count_nonzero(arr == info.label)
