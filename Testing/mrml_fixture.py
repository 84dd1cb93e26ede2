"""Real MRML for tests, from the ``slicer-core`` wheel (no Qt, no Slicer application).

    from mrml_fixture import mrml, make_ct_volume, OBLIQUE_FLIPPED  # noqa: F401  (pytest fixture)

    def test_x(mrml):
        volume = make_ct_volume(mrml.scene, labels, OBLIQUE_FLIPPED)

The ``mrml`` fixture builds what the Slicer application would: a scene, a
``vtkSlicerApplicationLogic`` with its colour logic registered as the "Colors" module logic, and
the SubjectHierarchy, Volumes and Segmentations module logics; it assigns ``slicer.mrmlScene``
and ``slicer.modules`` (``slicer.modules.segmentations.logic()`` ...) for code that expects them,
and restores them afterwards. Like Slicer's subject hierarchy plugin logic, it gives every
storable node that is added to the scene a subject hierarchy item.

Skips (with the reason) when slicer-core is not installed or the unrelated PyPI package
``slicer`` has overwritten its ``slicer/__init__.py``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LiverTumorSeg"
if str(MODULE_DIR) not in sys.path:
    # LiverTumorSegCore, as in Slicer (the module folder is on sys.path); importing it makes the
    # library (LiverTumorSegLib, whose terminology and errors it uses) importable from the source tree.
    sys.path.insert(0, str(MODULE_DIR))

# A flipped (det < 0 per axis pair) and oblique (20 degrees about S) IJK-to-RAS matrix with
# anisotropic spacing: catches every axis-order, LPS/RAS and direction mistake.
_th = np.deg2rad(20.0)
_rot = np.array([[np.cos(_th), -np.sin(_th), 0.0], [np.sin(_th), np.cos(_th), 0.0], [0.0, 0.0, 1.0]])
OBLIQUE_FLIPPED = np.eye(4)
OBLIQUE_FLIPPED[:3, :3] = _rot @ np.diag([-0.8, 0.9, -2.5])
OBLIQUE_FLIPPED[:3, 3] = [12.5, -20.0, 31.0]


def _import_slicer():
    try:
        import slicer
    except ImportError as exc:  # pragma: no cover - environment dependent
        pytest.skip(f"slicer-core is not installed ({exc})")
    if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
        pytest.skip("the 'slicer' package is not slicer-core's (the PyPI package 'slicer' overwrote it)")
    return slicer


def _logic_holder(logic):
    return types.SimpleNamespace(logic=lambda: logic)


class MRML(types.SimpleNamespace):
    """scene, app_logic, color_logic, sh_logic, volumes_logic, segmentations_logic."""


@pytest.fixture
def mrml():
    slicer = _import_slicer()
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    color_logic = app.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", color_logic)

    def register(logic, name):
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        return logic

    sh_logic = register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    volumes_logic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations_logic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    markups_logic = register(slicer.vtkSlicerMarkupsLogic(), "Markups")

    # What qSlicerSubjectHierarchyPluginLogic does in the application: an item per data node.
    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_added(caller, event, node):
        if node is None or node.GetHideFromEditors() or not node.IsA("vtkMRMLStorableNode"):
            return
        sh = caller.GetSubjectHierarchyNode()
        if sh is not None and not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)

    observer = scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, on_node_added)

    saved = {k: getattr(slicer, k) for k in ("mrmlScene", "modules", "app") if hasattr(slicer, k)}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        colors=_logic_holder(color_logic),
        subjecthierarchy=_logic_holder(sh_logic),
        volumes=_logic_holder(volumes_logic),
        segmentations=_logic_holder(segmentations_logic),
        markups=_logic_holder(markups_logic),
    )
    ns = MRML(scene=scene, app_logic=app, color_logic=color_logic, sh_logic=sh_logic,
              volumes_logic=volumes_logic, segmentations_logic=segmentations_logic, markups_logic=markups_logic,
              slicer=slicer)
    try:
        yield ns
    finally:
        scene.RemoveObserver(observer)
        for k in ("mrmlScene", "modules"):
            if k in saved:
                setattr(slicer, k, saved[k])
            elif hasattr(slicer, k):
                delattr(slicer, k)
        scene.Clear(1)


def vtk_matrix(a: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def make_ct_volume(scene, array_kji: np.ndarray, ijk_to_ras: np.ndarray = OBLIQUE_FLIPPED, name: str = "CT",
                   node_class: str = "vtkMRMLScalarVolumeNode"):
    """A volume node from a numpy (k, j, i) array with the given IJK-to-RAS matrix."""
    import slicer

    node = scene.AddNewNodeByClass(node_class, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def synthetic_labels(shape_kji=(10, 18, 20)) -> np.ndarray:
    """A liver block with two tumours inside it (0 background, 1 liver, 2 tumour)."""
    labels = np.zeros(shape_kji, dtype=np.uint8)
    k, j, i = shape_kji
    labels[2:k - 2, 3:j - 3, 3:i - 4] = 1
    labels[4:6, 5:8, 5:8] = 2
    labels[5:7, 10:12, 11:14] = 2
    return labels


def ct_from_labels(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """HU-like intensities: -900 air-ish background, 60 liver, 120 tumour, a little noise."""
    rng = np.random.default_rng(seed)
    hu = np.choose(labels, [-900, 60, 120]).astype(np.int16)
    return (hu + rng.integers(-5, 6, size=labels.shape)).astype(np.int16)


def study_with_volume(scene, volume_node):
    """Patient > Study > volume in the subject hierarchy; returns the study item."""
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT study")
    item = sh.GetItemByDataNode(volume_node) or sh.CreateItem(sh.GetSceneItemID(), volume_node)
    sh.SetItemParent(item, study)
    return study


def scene_state(scene) -> list:
    """Everything a run must not change when it fails: node IDs, classes, names, and for each
    segmentation its segment IDs and modification-relevant content."""
    state = []
    for i in range(scene.GetNumberOfNodes()):
        n = scene.GetNthNode(i)
        entry = [n.GetID(), n.GetClassName(), n.GetName()]
        if n.IsA("vtkMRMLSegmentationNode"):
            seg = n.GetSegmentation()
            entry.append([(seg.GetNthSegmentID(s), seg.GetNthSegment(s).GetName()) for s in range(seg.GetNumberOfSegments())])
        state.append(tuple(map(str, entry)))
    return state


# ---------------------------------------------------------------------------------------------
# A stand-in for `python -m LiverTumorSegLib segment` (same arguments and JSON lines), so that the
# out-of-process path is tested without torch: it thresholds the HU values of ct_from_labels.
# FAKE_CLI_MODE: ok | sleep (hangs, with a grandchild whose PID goes to FAKE_CLI_PIDFILE) |
# fail (error event, exit 2) | crash (SIGKILL itself) | badlabels | nodone.
# ---------------------------------------------------------------------------------------------
FAKE_CLI = r'''
import json, os, signal, subprocess, sys, time
import numpy as np
import SimpleITK as sitk

def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()

args = sys.argv[1:]
assert args[0] == "segment", args
inp = args[1]
out = args[args.index("-o") + 1]
rep = args[args.index("--report") + 1]
mode = os.environ.get("FAKE_CLI_MODE", "ok")
with open(os.environ.get("FAKE_CLI_ARGSFILE", os.devnull), "w") as f:
    json.dump(args, f)
emit({"event": "progress", "phase": "read", "fraction": 0.05, "message": "reading", "eta_s": None})
print("a line that is not JSON")
if mode == "fail":
    emit({"event": "error", "message": "checksum mismatch for bad.safetensors", "kind": "WeightsError"})
    print("livertumorseg: error: checksum mismatch for bad.safetensors", file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    sys.stderr.write("about to die\n"); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["FAKE_CLI_PIDFILE"], "w") as f:
        f.write(str(child.pid))
    emit({"event": "progress", "phase": "inference", "fraction": 0.3, "message": "window 1/9", "eta_s": 100.0})
    time.sleep(120)
img = sitk.ReadImage(inp)
a = sitk.GetArrayFromImage(img)
lab = np.zeros(a.shape, np.uint8)
lab[a > 0] = 1
lab[a > 90] = 2
if mode == "badlabels":
    lab[0, 0, 0] = 7
li = sitk.GetImageFromArray(lab)
li.CopyInformation(img)
emit({"event": "progress", "phase": "inference", "fraction": 0.8, "message": "window 9/9", "eta_s": 0.5})
sitk.WriteImage(li, out)
if "--probabilities" in args:  # as the real CLI: [P(liver region), P(tumour)], float32, input grid
    pr = np.where(lab >= 1, 0.9, 0.05).astype(np.float32)
    pt = np.where(lab == 2, np.clip(a / 150.0, 0.5, 0.9), np.where(lab == 1, 0.1, 0.0)).astype(np.float32)
    pi = sitk.GetImageFromArray(np.stack([pr, pt], axis=-1), isVector=True)
    pi.CopyInformation(img)
    sitk.WriteImage(pi, args[args.index("--probabilities") + 1], True)
vox = float(np.prod(img.GetSpacing())) / 1000.0
report = {"liver_volume_ml": float((lab >= 1).sum()) * vox, "tumour_count": 1,
          "tumour_total_volume_ml": float((lab == 2).sum()) * vox,
          "tumour_burden_percent": 100.0 * float((lab == 2).sum()) / max(1, int((lab >= 1).sum())),
          "tumours": [{"id": 1, "volume_ml": float((lab == 2).sum()) * vox, "max_diameter_mm": 4.5,
                       "centroid_lps_mm": [1.0, 2.0, 3.0], "centroid_ras_mm": [-1.0, -2.0, 3.0],
                       "confidence": 0.875, "max_probability": 0.99}],
          "quality": [{"code": "partial_liver", "severity": "warning", "message": "liver touches the first slice"},
                      {"code": "synthetic_training", "severity": "info", "message": "synthetic CT"}],
          "model": {"name": "fake"}, "device": "cpu"}
with open(rep, "w") as f:
    json.dump(report, f)
if mode == "nodone":
    sys.exit(0)
emit({"event": "progress", "phase": "write", "fraction": 1.0, "message": "done", "eta_s": 0.0})
emit({"event": "done", "output": out, "report_path": rep, "report": report})
'''


def write_fake_cli(folder) -> list:
    """Write the stand-in CLI into ``folder``; returns the command prefix for SegmentationJob."""
    path = Path(folder) / "fake_livertumorseg_cli.py"
    path.write_text(FAKE_CLI, encoding="utf-8")
    return [sys.executable, str(path)]


# ---------------------------------------------------------------------------------------------
# Importing LiverTumorSeg.py outside Slicer: slicer-core lacks the Qt-based pieces the module file
# imports at its top (ScriptedLoadableModule base classes, parameterNodeWrapper). Minimal
# stand-ins let the *logic* class run against the real MRML of the `mrml` fixture; the widget and
# Qt code are not exercised here.
# ---------------------------------------------------------------------------------------------
def import_module_file(monkeypatch):
    import importlib.util

    import slicer

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")] if type(self).__name__.endswith("Logic") else ""

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
            return node

    import unittest

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, methodName="runTest"):
            super().__init__(methodName)

        def delayDisplay(self, message, msec=None):
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", pnw, raising=False)
    spec = importlib.util.spec_from_file_location("LiverTumorSeg", MODULE_DIR / "LiverTumorSeg.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "LiverTumorSeg", module)
    spec.loader.exec_module(module)
    return module
