"""Liver Tumor Segmentation: fully automatic liver and liver-tumour segmentation of CT in 3D Slicer.

The network runs out of process (``PythonSlicer -m LiverTumorSegLib segment``), so a crash or an
out-of-memory kill cannot take Slicer down and a run can be cancelled. Everything that touches
MRML lives in the Qt-free ``LiverTumorSegCore`` package next to this file; this file only wires
the GUI. Nothing heavy is imported at module load: of the library only its light modules
(segment terminology, errors, run options) are loaded; torch and the network code are used only by the
child process (and by the self-test).
"""
import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4 (or outside Slicer): no translation
    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

if MODULE_DIR not in sys.path:  # LiverTumorSegCore (Slicer adds the module folder; scripts may not)
    sys.path.insert(0, MODULE_DIR)

# Importing LiverTumorSegCore makes the library importable (packaged next to this file in an
# extension build, <repo>/LiverTumorSegLib in the source tree) and loads only its light modules
# (terminology, errors): no torch, no Qt.
from LiverTumorSegCore.errors import (  # noqa: E402
    DependencyError,
    ModelError,
    ModuleError,
    RunCancelled,
    SegmentationExistsError,
)

__all__ = ["LiverTumorSeg", "LiverTumorSegWidget", "LiverTumorSegLogic", "LiverTumorSegTest",
           "LiverTumorSegParameterNode", "ModuleError", "SegmentationExistsError", "RunCancelled",
           "ModelError", "DependencyError"]

CONSOLE_EXAMPLE = """logic = slicer.util.getModuleLogic("LiverTumorSeg")
report = logic.segment(slicer.util.getNode("CTChest"), device="auto")
print(report["liver_volume_ml"], report["tumour_count"])"""


def _localFileUrl(path):
    """file:// URL of a file shipped with the module (help links never point to the web)."""
    from pathlib import Path

    return Path(os.path.abspath(path)).as_uri()


def _libraryFile(*parts):
    """A file of the library package (found without importing it)."""
    spec = importlib.util.find_spec("LiverTumorSegLib")
    if spec and spec.submodule_search_locations:
        return os.path.join(list(spec.submodule_search_locations)[0], *parts)
    return os.path.join(os.path.dirname(MODULE_DIR), "LiverTumorSegLib", *parts)


#
# LiverTumorSeg
#
class LiverTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # PyTorch (extension) is checked at the first Apply
        self.parent.contributors = ["LiverTumorSeg developers"]
        self.parent.helpText = _(
            "Fully automatic segmentation of the liver and liver tumours in a CT volume, with a report "
            "of liver volume, tumour count, tumour volumes, diameters, positions and tumour burden. "
            "Select the CT volume and press <b>Segment liver &amp; tumours</b>; the first run asks to install "
            "the required Python packages. The network runs in a separate process: Slicer stays "
            "responsive and the run can be cancelled. Research software, not for clinical use."
            "<p>From the Python console:</p><pre>{example}</pre>"
            "<p>Documentation: the <a href=\"{readme}\">README</a> installed with the module.</p>"
        ).format(example=CONSOLE_EXAMPLE, readme=_localFileUrl(os.path.join(MODULE_DIR, "README.md")))
        self.parent.acknowledgementText = _(
            "Developed by the LiverTumorSeg developers. The segmentation network is a U-Net with "
            "multi-scale context encoding, a codebook bottleneck and Mamba global feature refinement. "
            "The bundled model was trained on synthetic CT only, not on patient scans with expert labels "
            "(not on LiTS): see its <a href=\"{card}\">model card</a>. The extension follows the "
            "patterns of SlicerTotalSegmentator and SlicerMONAIAuto3DSeg."
        ).format(card=_localFileUrl(_libraryFile("resources", "models", "MODEL_CARD.md")))


#
# Parameter node
#
@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """Every user choice; saved with the scene.

    inputVolume / outputSegmentation / roi / reportTable: nodes. device: auto, GPU or CPU.
    model: "default" (bundled) or the file name (without extension) of an imported model.
    The algorithm options map to the library's by ``LiverTumorSegCore.job.PARAMETER_NODE_OPTIONS``
    (a test checks that every library option is mapped there or listed as hidden).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    reportTable: vtkMRMLTableNode
    device: Annotated[str, Choice(["auto", "GPU", "CPU"])] = "auto"
    model: str = "default"
    fast: bool = False
    keepLargestLiverComponent: bool = True
    tumoursInsideLiver: bool = True
    fillHoles: bool = True
    minTumourVolumeMl: Annotated[float, WithinRange(0.0, 10000.0)] = 0.1
    # "Tumour sensitivity" slider: None = argmax (the library's default); else P(tumour) threshold
    tumourThreshold: Optional[float] = None


#
# LiverTumorSegWidget
#
class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only: all work is done by the logic and LiverTumorSegCore."""

    POLL_MS = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._gpuMemory = None  # cached nvidia-smi answer
        self._gpuQueried = False

    # ------------------------------------------------------------------ set-up
    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverTumorSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateDeviceWarning)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.deleteModelButton.connect("clicked(bool)", self.onDeleteModel)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedToggled)
        self.ui.tumourSensitivityCheckBox.connect("toggled(bool)", self.onTumourSensitivityChanged)
        self.ui.tumourThresholdSlider.connect("valueChanged(double)", self.onTumourSensitivityChanged)

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollTimer)

        self.setRunning(False)
        self.refreshModelList()
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelJob(wait=True)
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.updateDeviceWarning()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event):
        self.cancelJob(wait=True)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = self.logic.firstCTVolume()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.selectModelInCombo(self._parameterNode.model)
            self.ui.reportTableView.setMRMLTableNode(self._parameterNode.reportTable)
        self.showQuality(self._reportOfTable(self._parameterNode.reportTable if self._parameterNode else None))
        self.updateButtons()

    @staticmethod
    def _reportOfTable(table):
        from LiverTumorSegCore import mrml

        try:
            return mrml.report_from_table(table)
        except ValueError:  # not our JSON
            return None

    def showQuality(self, report):
        """Quality flags beside the result: an icon (warning or information) and one line per flag."""
        import qt

        from LiverTumorSegCore import mrml

        level = mrml.quality_level(report)
        self.ui.qualityLabel.text = mrml.quality_html(report)
        self.ui.qualityLabel.visible = bool(level)
        self.ui.qualityIconLabel.visible = bool(level)
        if level:
            icon = qt.QStyle.SP_MessageBoxWarning if level == "warning" else qt.QStyle.SP_MessageBoxInformation
            self.ui.qualityIconLabel.setPixmap(slicer.app.style().standardIcon(icon).pixmap(24, 24))

    def updateButtons(self, caller=None, event=None):
        if self._job is not None:
            return  # the Apply button is the Cancel button while running
        p = self._parameterNode
        volume = p.inputVolume if p else None
        self.ui.applyButton.enabled = volume is not None
        self.ui.applyButton.toolTip = (_("Segment the liver and liver tumours in the selected CT volume")
                                       if volume else _("Select the input CT volume"))
        if volume is not None:
            self.ui.outputSegmentationSelector.baseName = _("{name} liver segmentation").format(name=volume.GetName())
        self.ui.openSegmentEditorButton.enabled = bool(p and p.outputSegmentation)
        self.updateSensitivityWidgets()

    # ------------------------------------------------------------------ tumour sensitivity
    def updateSensitivityWidgets(self):
        """Show the parameter node's tumourThreshold (None: box unticked = argmax)."""
        p = self._parameterNode
        threshold = p.tumourThreshold if p else None
        for w in (self.ui.tumourSensitivityCheckBox, self.ui.tumourThresholdSlider):
            w.blockSignals(True)
        try:
            self.ui.tumourSensitivityCheckBox.enabled = p is not None
            self.ui.tumourSensitivityCheckBox.checked = threshold is not None
            self.ui.tumourThresholdSlider.enabled = threshold is not None
            if threshold is not None:
                self.ui.tumourThresholdSlider.value = float(threshold)
        finally:
            for w in (self.ui.tumourSensitivityCheckBox, self.ui.tumourThresholdSlider):
                w.blockSignals(False)

    def onTumourSensitivityChanged(self, *args):
        """Store the threshold in the parameter node; re-threshold the last result (no network run)."""
        p = self._parameterNode
        if p is None or self._job is not None:
            return
        threshold = float(self.ui.tumourThresholdSlider.value) if self.ui.tumourSensitivityCheckBox.checked else None
        if not self.logic.canRethreshold(p.outputSegmentation):
            p.tumourThreshold = threshold  # used by the next run
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to update the tumour segment."), waitCursor=True):
            report = self.logic.setTumourThreshold(threshold, parameterNode=p, show3d=True)
            self.showQuality(report)
            self.log(_("Tumour threshold {t}: {n} tumour(s), {ml} mL ({s:.2f} s)").format(
                t=_("argmax") if threshold is None else f"{threshold:.2f}", n=report.get("tumour_count"),
                ml=report.get("tumour_total_volume_ml"), s=report.get("rethreshold_s") or 0.0))

    # ------------------------------------------------------------------ models
    def refreshModelList(self):
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem(_("Bundled default model"), "default")
            for info in self.logic.modelStore().models():
                combo.addItem(info.label, info.name)
        finally:
            combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self.selectModelInCombo(self._parameterNode.model)
        self.updateModelsFolderInfo()

    def selectModelInCombo(self, name):
        combo = self.ui.modelComboBox
        index = combo.findData(name or "default")
        wasBlocked = combo.blockSignals(True)
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(wasBlocked)
        self.ui.deleteModelButton.enabled = combo.currentIndex > 0

    def onModelSelected(self, index):
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or "default"
        self.ui.deleteModelButton.enabled = index > 0

    def onImportModel(self):
        import qt

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model weights"), "",
                                              _("Model weights (*.safetensors)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to import the model weights."), waitCursor=True):
            info = self.logic.modelStore().import_weights(path)
            self.refreshModelList()
            self._parameterNode.model = info.name
            self.selectModelInCombo(info.name)
            self.log(_("Imported model {label} (sha256 verified) into {folder}").format(
                label=info.label, folder=self.logic.modelsFolder()))

    def onDeleteModel(self):
        name = self.ui.modelComboBox.currentData
        if not name or name == "default":
            return
        if not slicer.util.confirmYesNoDisplay(
                _("Delete the model '{name}' from the models folder?").format(name=self.ui.modelComboBox.currentText)):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to delete the model."), waitCursor=True):
            self.logic.modelStore().delete(name)
            self._parameterNode.model = "default"
            self.refreshModelList()

    def onOpenModelsFolder(self):
        import qt

        folder = self.logic.modelsFolder()
        os.makedirs(folder, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def updateModelsFolderInfo(self):
        from LiverTumorSegCore.model_store import format_size

        store = self.logic.modelStore()
        self.ui.modelsFolderLabel.text = _("{folder} ({size})").format(folder=store.folder,
                                                                       size=format_size(store.size_bytes()))

    # ------------------------------------------------------------------ device, versions
    def updateDeviceWarning(self, *args):
        from LiverTumorSegCore import deps

        device = self.ui.deviceComboBox.currentText or "auto"
        if device.lower() != "cpu" and not self._gpuQueried:
            self._gpuQueried = True
            self._gpuMemory = deps.gpu_memory_gib()
        warning = deps.gpu_warning(device, self._gpuMemory)
        self.ui.deviceWarningLabel.text = warning
        self.ui.deviceWarningLabel.visible = bool(warning)

    def onAdvancedToggled(self, collapsed):
        if not collapsed:
            self.updateVersionInfo()
            self.updateModelsFolderInfo()

    def updateVersionInfo(self):
        versions = self.logic.dependencyVersions()
        notInstalled = _("not installed")
        self.ui.torchVersionLabel.text = versions.get("torch") or notInstalled
        self.ui.libraryVersionLabel.text = versions.get("LiverTumorSegLib") or notInstalled

    def onInstallDependencies(self):
        if not slicer.util.confirmOkCancelDisplay(
                _("Install PyTorch if it is missing and install or upgrade the Python packages this module "
                  "needs? This can download several hundred MB and take minutes.")):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to install the dependencies."), waitCursor=True):
            for line in self.logic.installDependencies(upgrade=True):
                self.log(line)
        self.updateVersionInfo()

    # ------------------------------------------------------------------ running
    def log(self, text):
        if text:
            self.ui.statusLog.appendPlainText(text)

    def setRunning(self, running):
        self.ui.applyButton.text = _("Cancel") if running else _("Segment liver && tumours")
        self.ui.applyButton.toolTip = _("Stop the segmentation; the scene is left unchanged") if running else ""
        for w in (self.ui.inputSelector, self.ui.outputSegmentationSelector, self.ui.roiSelector,
                  self.ui.optionsCollapsibleButton, self.ui.installDependenciesButton):
            w.enabled = not running
        self.ui.progressBar.visible = running
        if not running:
            self.ui.phaseLabel.text = ""
            self.ui.etaLabel.text = ""
            self.updateButtons()
        else:
            self.ui.applyButton.enabled = True

    def onApplyButton(self):
        if self._job is not None:
            self.log(_("Cancelling..."))
            self.cancelJob(wait=False)
            return
        p = self._parameterNode
        self.ui.statusLog.clear()
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.ensureDependencies():
                return
            segmentation = p.outputSegmentation
            replace = False
            if segmentation is not None and segmentation.GetSegmentation().GetNumberOfSegments() > 0:
                if not slicer.util.confirmYesNoDisplay(
                        _("Segmentation '{name}' already has segments. Replace them with the new result?").format(
                            name=segmentation.GetName())):
                    return
                replace = True
            from LiverTumorSegCore.job import SceneOptions

            job = self.logic.createJob(p.inputVolume, self.logic.optionsFromParameterNode(p), SceneOptions(
                segmentation_node=segmentation, roi_node=p.roi, table_node=p.reportTable, replace_existing=replace))
            job.prepare()
            job.start()
            self._job = job
            self.ui.progressBar.value = 0
            self.log(_("Segmenting '{name}' in a separate process...").format(name=p.inputVolume.GetName()))
            self.setRunning(True)
            self._timer.start()

    def ensureDependencies(self):
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("This module needs Python packages that are not installed yet: {packages}.\n"
                  "Install them now? (Downloads several hundred MB; PyTorch comes from the PyTorch extension.)")
                .format(packages=", ".join(missing)), _("Install dependencies")):
            self.log(_("Dependencies not installed: segmentation not started."))
            return False
        self.log(_("Installing {packages}...").format(packages=", ".join(missing)))
        slicer.app.processEvents()
        for line in self.logic.installDependencies():
            self.log(line)
        still = self.logic.missingDependencies()
        if still:
            raise DependencyError(_("Still missing after installation: {packages}. Restart Slicer and try again.")
                                  .format(packages=", ".join(still)))
        return True

    def onPollTimer(self):
        from LiverTumorSegCore.job import describe_event, format_eta, report_summary

        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            kind = event.get("event")
            if kind == "progress":
                self.ui.progressBar.value = int(round(1000 * float(event.get("fraction") or 0.0)))
                phase = event.get("phase") or ""
                message = event.get("message") or ""
                self.ui.phaseLabel.text = f"{phase}: {message}" if message else phase
                eta = format_eta(event.get("eta_s"))
                self.ui.etaLabel.text = _("about {eta} left").format(eta=eta) if eta else ""
            elif kind in ("log", "error", "exit"):
                self.log(describe_event(event))
        if not job.finished:
            return
        self._timer.stop()
        self._job = None
        try:
            report = job.finish()
            self.logic.keepProbabilities(job)
        except RunCancelled as exc:
            self.log(str(exc))
        except ModuleError as exc:
            self.log(_("Failed: {message}").format(message=exc))
            slicer.util.errorDisplay(str(exc), windowTitle=_("Liver Tumor Segmentation"))
        except Exception as exc:  # unexpected: show it, keep the GUI usable
            logging.exception("LiverTumorSeg: importing the result failed")
            slicer.util.errorDisplay(_("Importing the result failed: {message}").format(message=exc))
        else:
            scene = slicer.mrmlScene
            ids = report.get("slicer", {})
            self._parameterNode.outputSegmentation = scene.GetNodeByID(ids.get("segmentation_node_id"))
            table = scene.GetNodeByID(ids.get("table_node_id")) if ids.get("table_node_id") else None
            self._parameterNode.reportTable = table
            self.ui.reportTableView.setMRMLTableNode(table)
            self.showQuality(report)
            self.ui.resultsCollapsibleButton.collapsed = False
            self.log(report_summary(report))
            for note in report.get("notes") or []:
                self.log(str(note))
            self.showResult(p=self._parameterNode)
        finally:
            self.setRunning(False)

    def showResult(self, p):
        volume, segmentation = p.inputVolume, p.outputSegmentation
        if volume is not None:
            slicer.util.setSliceViewerLayers(background=volume, fit=False)
        if segmentation is not None and segmentation.GetDisplayNode() is not None:
            segmentation.GetDisplayNode().SetVisibility(True)

    def cancelJob(self, wait=False):
        job = self._job
        if job is None:
            return
        job.cancel()
        if wait:
            self._timer.stop()
            self._job = None
            job.cleanup()
            self.setRunning(False)

    def onOpenSegmentEditor(self):
        p = self._parameterNode
        if not p or not p.outputSegmentation:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.outputSegmentation)
        if p.inputVolume is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(p.inputVolume)
            else:  # Slicer < 5.4
                editor.setMasterVolumeNode(p.inputVolume)


#
# LiverTumorSegLogic
#
class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Thin logic: builds runs from LiverTumorSegCore and handles Slicer-only services
    (dependencies, PythonSlicer, settings). Works headless::

        report = LiverTumorSegLogic().segment(volumeNode)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.commandPrefix = None  # e.g. [python, stand-in-cli.py] in tests; None = the library CLI
        self.pythonExecutableOverride = None
        # the last run's probabilities around the liver (LiverTumorSegCore.sensitivity), in memory
        # only: float16, 4 bytes per voxel of the liver's box (see sensitivity.py)
        self.lastProbabilities = None

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ paths
    @staticmethod
    def resourcePath(*parts):
        return os.path.join(MODULE_DIR, "Resources", *parts)

    @staticmethod
    def modelsFolder():
        override = os.environ.get("LIVERTUMORSEG_MODELS_DIR")
        if override:
            return override
        try:
            settingsDir = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
        except AttributeError:  # no application (tests, plain Python)
            settingsDir = os.path.join(os.path.expanduser("~"), ".livertumorseg")
        return os.path.join(settingsDir, "LiverTumorSeg", "models")

    def modelStore(self):
        from LiverTumorSegCore.model_store import ModelStore

        return ModelStore(self.modelsFolder())

    def resolveModel(self, model):
        """None/"default" -> None (the bundled model); an existing file path; or the name of an
        imported model in the models folder."""
        if model in (None, "", "default"):
            return None
        if os.path.isfile(str(model)):
            return str(model)
        info = self.modelStore().find(str(model))
        if info is None:
            raise ModelError(_("Model '{model}' is neither a weights file nor an imported model "
                               "(models folder: {folder}).").format(model=model, folder=self.modelsFolder()))
        return str(info.path)

    def pythonExecutable(self):
        """PythonSlicer (Slicer's Python launcher) for the child process."""
        if self.pythonExecutableOverride:
            return self.pythonExecutableOverride
        found = shutil.which("PythonSlicer")
        if found:
            return found
        try:
            home = slicer.app.slicerHome
        except AttributeError:
            home = None
        if home:
            candidate = os.path.join(home, "bin", "PythonSlicer" + (".exe" if os.name == "nt" else ""))
            if os.path.isfile(candidate):
                return candidate
        return sys.executable

    @staticmethod
    def firstCTVolume():
        scene = slicer.mrmlScene
        nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                return node
        return None

    # ------------------------------------------------------------------ dependencies
    def requirements(self):
        from LiverTumorSegCore import deps

        path = self.resourcePath("requirements.txt")
        return deps.split_protected(deps.read_requirements(path))[0] if os.path.isfile(path) else []

    def missingDependencies(self):
        from LiverTumorSegCore import deps

        missing = [] if deps.installed_version("torch") else ["torch (PyTorch extension)"]
        return missing + deps.missing_requirements(self.requirements())

    def dependencyVersions(self):
        from LiverTumorSegCore import deps
        from LiverTumorSegCore.job import library_version

        versions = deps.versions(["torch", "monai", "numpy", "SimpleITK"])
        versions["LiverTumorSegLib"] = library_version()
        return versions

    def installDependencies(self, upgrade=False):
        """torch through the PyTorch extension, the rest from Resources/requirements.txt; returns
        what was done, one line each. numpy, SimpleITK, scipy and torch are pinned (pip
        constraints) so that pip never replaces what Slicer or the PyTorch extension installed;
        scipy (bundled with Slicer) is installed only when missing and never upgraded.

        torch is checked through package metadata, never imported here (the network runs in a
        child process). PyTorchUtils' installTorch runs ``ltt install torch<requirement>`` without
        ``--upgrade``: it installs a missing or too old torch but never upgrades a satisfying one,
        so "upgrade" says so instead of pretending."""
        from LiverTumorSegCore import deps

        done = []
        status, version = deps.torch_status()
        if status != "ok":
            try:
                import PyTorchUtils
            except ImportError:
                raise DependencyError(_("The PyTorch extension is required: install it from the Extensions "
                                        "Manager and restart Slicer.")) from None
            # installTorch imports torch at its end: unavoidable, but only when something changed
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=deps.TORCH_REQUIREMENT)
            newStatus, newVersion = deps.torch_status()
            if torch is None or newStatus != "ok":
                raise DependencyError(_("PyTorch {requirement} could not be installed (installed: {version}).").format(
                    requirement=deps.TORCH_REQUIREMENT, version=newVersion or _("none")))
            note = _(" (was {version}); restart Slicer").format(version=version) if version else ""
            done.append(_("PyTorch {version} installed by the PyTorch extension{note}.").format(
                version=newVersion, note=note))
        elif upgrade:
            done.append(_("PyTorch {version} is installed and satisfies {requirement}; it is managed by the PyTorch "
                          "extension and was not changed (use the PyTorch Utils module to change it).").format(
                version=version, requirement=deps.TORCH_REQUIREMENT))
        plan = deps.pip_plan(self.requirements(), upgrade=upgrade)
        for requirement in plan["kept"]:
            done.append(_("{requirement}: kept the version bundled with Slicer.").format(requirement=requirement))
        if not plan["install"] and not plan["upgrade"]:
            if not done:
                done.append(_("All Python packages are installed."))
            return done
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            constraints = os.path.join(tmp, "constraints.txt")
            with open(constraints, "w", encoding="utf-8") as f:
                f.write(deps.constraints_text())
            before = deps.versions([deps.requirement_name(r) for r in plan["install"] + plan["upgrade"]])
            if plan["install"]:
                self._pipInstall(plan["install"], constraints)
            if plan["upgrade"]:
                self._pipInstall(plan["upgrade"] + ["--upgrade"], constraints)
        after = deps.versions(list(before))
        changed = [name for name in before if before[name] != after[name]]
        for name in changed:
            done.append(_("{name}: {old} -> {new}").format(name=name, old=before[name] or _("not installed"),
                                                           new=after[name] or _("not installed")))
        if changed:
            done.append(_("Restart Slicer if any of these packages was already in use."))
        else:
            done.append(_("Python packages are up to date (nothing changed)."))
        return done

    @staticmethod
    def _pipInstall(args, constraints):
        """pip install through ``slicer.packaging`` (Slicer >= 5.12; not imported by ``slicer``
        itself, so imported here) or ``slicer.util.pip_install`` (Slicer 5.6-5.10)."""
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_install"):
            packaging.pip_install(list(args), constraints=constraints, requester="LiverTumorSeg")
        else:
            slicer.util.pip_install(list(args) + ["-c", constraints])

    # ------------------------------------------------------------------ segmentation
    def optionsFromParameterNode(self, parameterNode):
        """The run's options from the parameter node, through the one name table
        (``PARAMETER_NODE_OPTIONS``: camelCase parameter -> library option)."""
        from LiverTumorSegCore.job import PARAMETER_NODE_OPTIONS, SegmentationOptions

        values = {option: getattr(parameterNode, name) for name, option in PARAMETER_NODE_OPTIONS.items()}
        return SegmentationOptions.create(model=parameterNode.model, **values)

    def createJob(self, volumeNode, options=None, scene=None):
        """A job for ``volumeNode``: ``options`` (SegmentationOptions: model and algorithm
        options) say what to compute, ``scene`` (SceneOptions: nodes to write, replace, show)
        where the result goes. ``options.model`` may be an imported model's name."""
        from LiverTumorSegCore.job import SceneOptions, SegmentationJob, SegmentationOptions

        options = options or SegmentationOptions()
        options = dataclasses.replace(options, model=self.resolveModel(options.model))
        return SegmentationJob(volumeNode, options=options, python_executable=self.pythonExecutable(),
                               command_prefix=self.commandPrefix, **(scene or SceneOptions()).job_arguments())

    def segment(self, volumeNode, options=None, progressCallback=None, *, scene=None, timeout=None,
                checkDependencies=True, **overrides):
        """Segment liver and liver tumours in ``volumeNode``; one blocking call.

        ``options``: a SegmentationOptions (default: the library's defaults and the bundled
        model); keyword ``overrides`` change it by name: ``model`` (None = bundled, a
        .safetensors path or an imported model's name), any library option (``device="GPU"``,
        ``fast=True``, ``fill_holes=False``, ``min_tumour_volume_ml=0.5``, ...), or a scene
        setting of SceneOptions (``segmentation_node``, ``roi_node``, ``table_node``,
        ``replace_existing``, ``show3d``), which may also come whole as ``scene``.
        Writes the result into the segmentation node (created when None; one with segments
        needs ``replace_existing=True``) and a report table; returns the report dict
        (liver_volume_ml, tumour_count, tumours, tumour_burden_percent, ...; node IDs under
        ``report["slicer"]``). ``progressCallback(event)`` may return True to cancel. On any
        failure the scene is left unchanged.
        """
        from LiverTumorSegCore.job import SceneOptions, SegmentationOptions

        if options is not None and not isinstance(options, SegmentationOptions):
            raise TypeError("options must be a SegmentationOptions (give nodes by keyword: segmentation_node=...)")
        sceneNames = {f.name for f in dataclasses.fields(SceneOptions)}
        sceneOverrides = {k: overrides.pop(k) for k in list(overrides) if k in sceneNames}
        scene = dataclasses.replace(scene or SceneOptions(), **sceneOverrides)
        options = (options or SegmentationOptions()).with_overrides(**overrides)
        if checkDependencies and self.commandPrefix is None:
            missing = self.missingDependencies()
            if missing:
                raise DependencyError(_("Missing Python packages: {packages}. Run "
                                        "slicer.util.getModuleLogic('LiverTumorSeg').installDependencies() "
                                        "or press Apply once in the module.").format(packages=", ".join(missing)))
        job = self.createJob(volumeNode, options, scene)
        report = job.run(callback=progressCallback, timeout=timeout)
        self.keepProbabilities(job)
        return report

    # ------------------------------------------------------------------ tumour sensitivity
    def keepProbabilities(self, job):
        """After a successful run: keep its probabilities for :meth:`setTumourThreshold`."""
        self.lastProbabilities = getattr(job, "probabilities", None)

    def canRethreshold(self, segmentationNode=None):
        kept = self.lastProbabilities
        return kept is not None and (segmentationNode is None or kept.segmentation_node_id == segmentationNode.GetID())

    def setTumourThreshold(self, threshold, segmentationNode=None, tableNode=None, parameterNode=None, show3d=False):
        """Re-threshold the last result at ``threshold`` (None = argmax) without running the
        network: only the "Liver tumor" segment and the report table change. Stores the value
        in ``parameterNode`` (``tumourThreshold``) when given. Returns the new report."""
        from LiverTumorSegCore.errors import RunError
        from LiverTumorSegCore.sensitivity import apply_tumour_threshold

        if parameterNode is not None:
            parameterNode.tumourThreshold = threshold
            segmentationNode = segmentationNode or parameterNode.outputSegmentation
            tableNode = tableNode or parameterNode.reportTable
        kept = self.lastProbabilities
        if kept is None:
            raise RunError(_("No probabilities kept from a run in this session: run the segmentation first."))
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.GetNodeByID(kept.segmentation_node_id)
        if not self.canRethreshold(segmentationNode):
            raise RunError(_("The kept probabilities belong to another segmentation: run the segmentation again."))
        return apply_tumour_threshold(segmentationNode, kept, threshold, table_node=tableNode, show3d=show3d)


#
# LiverTumorSegTest
#
class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a synthetic oblique CT, a tiny random model (or the bundled one),
    the real out-of-process run, then cancel and bad-input checks."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BadInputs()
        self.setUp()
        self.test_SegmentSyntheticVolume()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    # helpers
    def _syntheticVolume(self):
        import numpy as np

        labels = np.zeros((16, 24, 28), dtype=np.uint8)
        labels[3:13, 4:20, 4:24] = 1
        labels[6:9, 8:12, 8:13] = 2
        hu = np.choose(labels, [-900, 60, 120]).astype(np.int16)
        volume = slicer.util.addVolumeFromArray(hu, name="LiverTumorSegTestCT")
        # flipped and oblique (20 degrees about S), anisotropic: catches axis and LPS/RAS mistakes
        theta = np.deg2rad(20.0)
        rotation = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0],
                             [0.0, 0.0, 1.0]])
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([-0.8, 0.9, -2.5])
        ijkToRas[:3, 3] = [12.5, -20.0, 31.0]
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRas[r, c]))
        volume.SetIJKToRASMatrix(matrix)
        return volume, labels

    def _model(self):
        """The bundled default model (two-stage bundle or single-stage weights) when present, else
        a tiny random model in a temp folder."""
        from LiverTumorSegLib.weights import DEFAULT_WEIGHTS, bundle_path

        if bundle_path(None) is not None or DEFAULT_WEIGHTS.is_file():
            return None
        import tempfile

        from LiverTumorSegLib.models import build_model
        from LiverTumorSegLib.weights import save_weights

        folder = tempfile.mkdtemp(prefix="LiverTumorSegTest-")
        path = os.path.join(folder, "tiny.safetensors")
        save_weights(build_model("baseline", features=(4, 8)), path, {"name": "tiny-test", "version": "test"})
        return path

    def _nodeIDs(self):
        return [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]

    # tests
    def test_BadInputs(self):
        import numpy as np

        self.delayDisplay("Bad inputs give clear errors")
        logic = LiverTumorSegLogic()
        label = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), np.uint8), name="labels",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
        before = self._nodeIDs()
        for node, text in ((None, "No input volume"), (label, "label map")):
            with self.assertRaises(ModuleError) as ctx:
                logic.segment(node, checkDependencies=False)
            self.assertIn(text, str(ctx.exception))
        self.assertEqual(self._nodeIDs(), before)

    def test_SegmentSyntheticVolume(self):
        missing = LiverTumorSegLogic().missingDependencies()
        if missing:
            self.delayDisplay(f"Skipped: missing {', '.join(missing)}")
            return
        self.delayDisplay("Segmenting a synthetic CT out of process")
        volume, labels = self._syntheticVolume()
        logic = LiverTumorSegLogic()
        report = logic.segment(volume, model=self._model(), device="cpu", fast=True, timeout=600)
        segmentation = slicer.mrmlScene.GetNodeByID(report["slicer"]["segmentation_node_id"])
        seg = segmentation.GetSegmentation()
        self.assertEqual([seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())],
                         ["Liver", "Liver tumor"])
        from LiverTumorSegCore import mrml

        exported = mrml.export_labels(segmentation, volume)
        self.assertEqual(exported.shape, labels.shape)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(report["slicer"]["table_node_id"]))
        self.assertIn("liver_volume_ml", report)
        self.assertIsInstance(report.get("quality"), list)
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        missing = LiverTumorSegLogic().missingDependencies()
        if missing:
            self.delayDisplay(f"Skipped: missing {', '.join(missing)}")
            return
        self.delayDisplay("Cancelling a run leaves the scene unchanged")
        volume, _labels = self._syntheticVolume()
        before = self._nodeIDs()
        with self.assertRaises(RunCancelled):
            LiverTumorSegLogic().segment(volume, model=self._model(), device="cpu",
                                         progressCallback=lambda event: True, timeout=600)
        self.assertEqual(self._nodeIDs(), before)
        self.delayDisplay("Test passed")
