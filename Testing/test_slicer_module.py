"""Static checks of the Slicer extension (no Slicer needed): CMake packaging, the .ui file against
the module code and its parameter node, import-time weight, strings, icons, requirements; and
unit tests of the Qt-free core pieces that need no MRML (runner, models folder, dependencies)."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LiverTumorSeg"
LIB_DIR = REPO / "LiverTumorSegLib"
MODULE_FILE = MODULE_DIR / "LiverTumorSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverTumorSeg.ui"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


# ------------------------------------------------------------------------------------------ CMake
# The CMake files run in real CMake (script mode, ``cmake -P``): a prelude defines Slicer's
# macros and the project-only commands as stubs that record their arguments, one
# "KEY<TAB>value" line each; every other command is CMake's own, and a command CMake does not
# know fails the run.
_CMAKE_PRELUDE = r"""
cmake_minimum_required(VERSION 3.16)
function(_lts_record key)
  foreach(value IN LISTS ARGN)
    _file(APPEND "${LTS_RECORD}" "${key}\t${value}\n")
  endforeach()
endfunction()
# Script mode refuses CONFIGURE_DEPENDS (a configure-time re-glob); everything else is CMake's file().
macro(file)
  set(_lts_file_args ${ARGN})
  list(REMOVE_ITEM _lts_file_args CONFIGURE_DEPENDS)
  _file(${_lts_file_args})
endmacro()
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(ARG "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(ARG_UNPARSED_ARGUMENTS OR ARG_KEYWORDS_MISSING_VALUES)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: unexpected ${ARG_UNPARSED_ARGUMENTS}${ARG_KEYWORDS_MISSING_VALUES}")
  endif()
  _lts_record(NAME ${ARG_NAME})
  _lts_record(SCRIPTS ${ARG_SCRIPTS})
  _lts_record(RESOURCES ${ARG_RESOURCES})
  if(ARG_WITH_GENERIC_TESTS)
    _lts_record(WITH_GENERIC_TESTS ON)
  endif()
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(ARG "" "SCRIPT" "" ${ARGN})
  _lts_record(UNITTEST ${ARG_SCRIPT})
endfunction()
function(project name)
  _lts_record(PROJECT ${name})
endfunction()
function(find_package)
  string(REPLACE ";" " " args "${ARGN}")
  _lts_record(FIND_PACKAGE "${args}")
endfunction()
function(add_subdirectory dir)
  _lts_record(SUBDIRECTORY ${dir})
endfunction()
"""


def _run_cmake(tmp: Path, cmake_file: Path, variables: dict, record_vars=()) -> dict:
    """Run ``cmake_file`` with the stub prelude; returns {KEY: [values]} of the stubs' records
    (and of ``record_vars``, the values of those variables afterwards)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (the CMake files are checked by running them in script mode)")
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "record.tsv"
    record.write_text("")
    sets = "".join(f'set({k} "{v}")\n' for k, v in {**variables, "LTS_RECORD": record}.items())
    after = "".join(f'_lts_record({v} "${{{v}}}")\n' for v in record_vars)
    script = tmp / "run.cmake"
    script.write_text(_CMAKE_PRELUDE + sets + f'include("{cmake_file}")\n' + after)
    out = subprocess.run([cmake, "-P", str(script)], capture_output=True, text=True, timeout=120, cwd=str(tmp))
    assert out.returncode == 0, f"cmake -P {cmake_file.name} failed:\n{out.stdout}{out.stderr}"
    recorded: dict = {}
    for line in record.read_text().splitlines():
        key, _, value = line.partition("\t")
        recorded.setdefault(key, []).append(value)
    return recorded


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmake")
    binary = tmp / "build" / "LiverTumorSeg"
    macro = _run_cmake(tmp, MODULE_DIR / "CMakeLists.txt", {
        "CMAKE_CURRENT_SOURCE_DIR": MODULE_DIR, "CMAKE_CURRENT_BINARY_DIR": binary,
        "CMAKE_BINARY_DIR": tmp / "build", "Slicer_QTSCRIPTEDMODULES_LIB_DIR": "lib/qt-scripted-modules",
        "BUILD_TESTING": "ON"})
    assert macro.get("UNITTEST") == ["LiverTumorSeg.py"]
    scripts = set()
    for s in macro["SCRIPTS"]:
        # ctkMacroCompilePythonScript: relative -> module folder; absolute -> relative to the binary dir
        if os.path.isabs(s):
            assert Path(s).is_file(), f"CMake did not copy {s} into the build folder"
            scripts.add(Path(os.path.relpath(s, binary)).as_posix())
        else:
            scripts.add(s)
    return macro, scripts


def test_cmake_packages_every_library_file(packaged):
    _, scripts = packaged
    library = {str(p.relative_to(REPO)).replace(os.sep, "/") for p in LIB_DIR.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert library, "no library files found"
    missing = sorted(library - scripts)
    assert not missing, f"library files not packaged by LiverTumorSeg/CMakeLists.txt: {missing}"


def test_cmake_packages_every_module_file(packaged):
    macro, scripts = packaged
    module = {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in MODULE_DIR.rglob("*.py")
              if "__pycache__" not in p.parts}
    resources = set(macro["RESOURCES"])
    missing = sorted(f for f in module - scripts if f not in resources)
    assert not missing, f"module files not packaged: {missing}"
    for f in scripts:
        if not f.startswith("LiverTumorSegLib/"):
            assert (MODULE_DIR / f).is_file(), f"CMake lists a missing script: {f}"
    for f in resources:
        assert (MODULE_DIR / f).is_file(), f"CMake lists a missing resource: {f}"
    assert macro["NAME"] == ["LiverTumorSeg"] and "WITH_GENERIC_TESTS" in macro


def test_top_level_cmake_metadata(tmp_path):
    generated = tmp_path / "generate_config.cmake"
    generated.write_text('_lts_record(INCLUDED generate_config)\n')
    cpack = tmp_path / "cpack.cmake"
    cpack.write_text('_lts_record(INCLUDED cpack)\n')
    use = tmp_path / "use_slicer.cmake"
    use.write_text('_lts_record(INCLUDED use_slicer)\n')
    keys = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")
    rec = _run_cmake(tmp_path, REPO / "CMakeLists.txt", {
        "CMAKE_CURRENT_SOURCE_DIR": REPO, "Slicer_USE_FILE": use,
        "Slicer_EXTENSION_GENERATE_CONFIG": generated, "Slicer_EXTENSION_CPACK": cpack}, record_vars=keys)
    sets = {k: " ".join(rec.get(k, [])) for k in keys}
    assert sets["EXTENSION_CATEGORY"] == "Segmentation"
    assert sets["EXTENSION_DEPENDS"] == "PyTorch"
    assert sets["EXTENSION_HOMEPAGE"].startswith("https://github.com/")
    for key in ("EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert sets.get(key), key
    assert (REPO / "Resources" / sets["EXTENSION_ICONURL"].rsplit("/", 1)[-1]).is_file()
    # the only picture is a drawing: no screenshot is claimed until a real capture exists
    assert sets.get("EXTENSION_SCREENSHOTURLS", "") == ""
    assert not list((REPO / "Resources").glob("Screenshot*"))
    assert rec["PROJECT"] == ["LiverTumorSeg"]
    assert rec["FIND_PACKAGE"] == ["Slicer REQUIRED"]
    assert rec["SUBDIRECTORY"] == ["LiverTumorSeg"]
    assert rec["INCLUDED"] == ["use_slicer", "generate_config", "cpack"]


# ------------------------------------------------------------------------------------------ .ui
def _ui_tree():
    return ET.parse(UI_FILE).getroot()


def _ui_widgets():
    return {w.get("name"): w.get("class") for w in _ui_tree().iter("widget")}


def test_ui_is_valid_designer_xml():
    root = _ui_tree()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "LiverTumorSeg"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LiverTumorSeg"
    widgets = _ui_widgets()
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    for name, cls in widgets.items():
        assert cls.startswith("Q") or cls in custom, f"{name}: class {cls} is not declared as a custom widget"
    names = list(widgets)
    assert len(names) == len(set(names)), "duplicate widget names"
    mrml_widgets = {n for n, c in widgets.items() if c.startswith("qMRML") and n != "LiverTumorSeg"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert mrml_widgets <= connected, f"MRML widgets without the scene: {mrml_widgets - connected}"


def test_every_ui_name_used_by_the_module_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the module uses no widgets?"
    missing = sorted(used - set(_ui_widgets()))
    assert not missing, f"widgets used in LiverTumorSeg.py but absent from the .ui: {missing}"


def _parameter_node_fields():
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in LiverTumorSeg.py")


def test_ui_parameter_bindings_match_the_parameter_node():
    fields = _parameter_node_fields()
    widgets = _ui_widgets()
    bound = {}
    for w in _ui_tree().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0"
                bound[prop.findtext("string")] = w.get("name")
    assert bound, "no widget is bound to the parameter node"
    for param, widget in bound.items():
        assert param in fields, f"{widget} is bound to unknown parameter {param!r}"
        cls, ann = widgets[widget], fields[param]
        expected = {"QCheckBox": "bool", "QDoubleSpinBox": "float", "QSpinBox": "int"}.get(cls)
        if expected:
            assert re.search(rf"\b{expected}\b", ann), f"{widget} ({cls}) bound to {param}: {ann}"
        elif cls == "QComboBox":
            assert "Choice(" in ann, f"{param}: a QComboBox binding needs Annotated[..., Choice([...])]"
        elif cls == "qMRMLNodeComboBox":
            assert ann.startswith("vtkMRML"), f"{param}: {ann}"
            node_types = [s.text for s in widgets_property(widget, "nodeTypes")]
            assert ann in node_types, f"{widget} nodeTypes {node_types} vs {ann}"
    for required in ("inputVolume", "outputSegmentation", "roi", "device", "fast"):
        assert required in bound, f"{required} is not bound to a widget"


def widgets_property(widget_name, prop_name):
    for w in _ui_tree().iter("widget"):
        if w.get("name") == widget_name:
            for prop in w.findall("property"):
                if prop.get("name") == prop_name:
                    return list(prop.iter("string"))
    return []


def test_ui_has_the_required_controls():
    widgets = _ui_widgets()
    for name, cls in {"inputSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
                      "roiSelector": "qMRMLNodeComboBox", "applyButton": "QPushButton",
                      "progressBar": "QProgressBar", "statusLog": "QPlainTextEdit", "reportTableView": "qMRMLTableView",
                      "openSegmentEditorButton": "QPushButton", "advancedCollapsibleButton": "ctkCollapsibleButton",
                      "installDependenciesButton": "QPushButton", "deviceWarningLabel": "QLabel"}.items():
        assert widgets.get(name) == cls, name
    advanced = [w for w in _ui_tree().iter("widget") if w.get("name") == "advancedCollapsibleButton"][0]
    collapsed = [p for p in advanced.findall("property") if p.get("name") == "collapsed"]
    assert collapsed and collapsed[0].findtext("bool") == "true"
    assert [s.text for s in widgets_property("roiSelector", "nodeTypes")] == ["vtkMRMLMarkupsROINode"]


# ------------------------------------------------------------------------------------------ module file
def _module_ast():
    return ast.parse(MODULE_FILE.read_text())


HEAVY = {"torch", "monai", "LiverTumorSegLib", "SimpleITK", "scipy", "safetensors", "qt", "ctk"}
#: The library modules the Slicer process may load: standard library only (segment terminology,
#: errors, file helpers, the run options and their declaration helpers; the package ``__init__``
#: adds ``progress``). Everything else of the library needs torch.
LIGHT_LIBRARY = {"LiverTumorSegLib", "LiverTumorSegLib.errors", "LiverTumorSegLib.progress",
                 "LiverTumorSegLib.terminology", "LiverTumorSegLib.options", "LiverTumorSegLib.utils",
                 "LiverTumorSegLib.utils.files", "LiverTumorSegLib.utils.options", "LiverTumorSegLib.utils.config"}


def _top_level_imports(tree, allowed=frozenset()):
    """Top-level package names a module imports at load, except imports of modules in ``allowed``."""
    names = set()
    for node in tree.body:
        for sub in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
            if isinstance(sub, ast.Import):
                names |= {a.name.split(".")[0] for a in sub.names if a.name not in allowed}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0 and sub.module not in allowed:
                names.add(sub.module.split(".")[0])
    return names


def test_module_has_four_classes_and_light_imports():
    tree = _module_ast()
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["LiverTumorSeg"] == ["ScriptedLoadableModule"]
    assert classes["LiverTumorSegWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["LiverTumorSegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["LiverTumorSegTest"] == ["ScriptedLoadableModuleTest"]
    heavy = _top_level_imports(tree) & HEAVY
    assert not heavy, f"imported at module load: {heavy}"


def _loaded(code: str, cwd, *args) -> list:
    """Run ``code`` in a fresh Python (cwd ``cwd``); it prints a JSON value as its last line."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         timeout=120, cwd=str(cwd))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_REPORT_LOADED = ("import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('torch', 'monai', 'SimpleITK', 'scipy', 'safetensors', 'qt', 'ctk', 'slicer', 'vtk', "
                  "'LiverTumorSegLib'))))")


def test_core_is_qt_free_and_light(tmp_path):
    core = MODULE_DIR / "LiverTumorSegCore"
    for path in core.glob("*.py"):
        heavy = _top_level_imports(ast.parse(path.read_text()), LIGHT_LIBRARY) & (HEAVY | {"slicer", "vtk"})
        assert not heavy, f"{path.name} imports {heavy} at load"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import LiverTumorSegCore, LiverTumorSegCore.job, LiverTumorSegCore.mrml, LiverTumorSegCore.batch, "
            "LiverTumorSegCore.model_store, LiverTumorSegCore.deps, LiverTumorSegCore.runner; " + _REPORT_LOADED)
    loaded = _loaded(code, tmp_path, MODULE_DIR)
    assert "LiverTumorSegLib.terminology" in loaded
    assert set(loaded) <= LIGHT_LIBRARY, f"importing the core loads {sorted(set(loaded) - LIGHT_LIBRARY)}"


# Hide every copy of the library the interpreter could find (editable-install finder, a folder on
# sys.path such as the repository root or site-packages), as in Slicer running the source tree.
_HIDE_LIBRARY = (
    "import importlib.util, os, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in (getattr(f, '__module__', '') or '')]; "
    "sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.curdir, 'LiverTumorSegLib'))]; "
    "assert importlib.util.find_spec('LiverTumorSegLib') is None, 'library still importable'; "
)


@pytest.mark.parametrize("entry", ["core", "batch_script"])
def test_core_finds_the_library_in_the_source_tree(entry, tmp_path):
    """Loaded from the source tree with the library not installed, the core (and so the module
    and Scripts/batch_segment.py) finds ``<repo>/LiverTumorSegLib`` by itself."""
    if entry == "core":
        setup = "sys.path.insert(0, sys.argv[1]); "
        arg = MODULE_DIR
    else:
        setup = "import runpy; runpy.run_path(sys.argv[1], run_name='batch_segment')['_setup_paths'](); "
        arg = MODULE_DIR / "Scripts" / "batch_segment.py"
    code = (_HIDE_LIBRARY + setup + "import LiverTumorSegCore.mrml, LiverTumorSegCore.job, LiverTumorSegLib; "
            "print(__import__('json').dumps([LiverTumorSegLib.__file__, 'torch' in sys.modules]))")
    where, torch_loaded = _loaded(code, tmp_path, arg)
    assert Path(where).resolve() == (LIB_DIR / "__init__.py").resolve()
    assert not torch_loaded


def test_importing_the_module_file_loads_no_torch(tmp_path):
    """LiverTumorSeg.py, imported as Slicer does (slicer-core plus the test stand-ins for the Qt
    pieces), loads only the light library modules."""
    pytest.importorskip("slicer")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pytest, mrml_fixture; "
            "mrml_fixture.import_module_file(pytest.MonkeyPatch()); " + _REPORT_LOADED)
    loaded = _loaded(code, tmp_path, Path(__file__).resolve().parent)
    library = {m for m in loaded if m.startswith("LiverTumorSegLib")}
    assert "LiverTumorSegLib.errors" in library and library <= LIGHT_LIBRARY, loaded
    assert not {"torch", "monai", "SimpleITK", "scipy", "qt", "ctk"} & set(loaded), loaded


def test_user_strings_go_through_translation():
    tree = _module_ast()
    cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorSeg"][0]
    seen = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            attr = node.targets[0].attr
            if attr in ("title", "helpText", "acknowledgementText"):
                call = node.value
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "format":
                    call = call.func.value
                assert isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_", attr
                seen.add(attr)
    assert seen == {"title", "helpText", "acknowledgementText"}
    text = MODULE_FILE.read_text()
    assert '_("Liver Tumor Segmentation")' in text
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in text
    assert "except ImportError" in text and "def _(text)" in text  # fallback without slicer.i18n


def test_help_and_readme_document_the_console_call():
    text = MODULE_FILE.read_text()
    assert "logic.segment(" in text
    readme = (MODULE_DIR / "README.md").read_text()
    assert "LiverTumorSegLogic" in readme or 'getModuleLogic("LiverTumorSeg")' in readme
    assert ".segment(" in readme and "batch_segment.py" in readme


def test_icons_are_real_pngs():
    from PIL import Image

    for path, size in ((MODULE_DIR / "Resources" / "Icons" / "LiverTumorSeg.png", (128, 128)),
                       (REPO / "Resources" / "LiverTumorSeg.png", (128, 128)),
                       (REPO / "Resources" / "Drawing01-not-a-screenshot.png", None)):
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            if size:
                assert im.size == size
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 8, f"{path.name} is blank"


def test_requirements_never_touch_bundled_packages():
    from LiverTumorSegCore import deps

    reqs = deps.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    keep, skipped = deps.split_protected(reqs)
    assert reqs and not skipped, f"requirements.txt lists bundled/protected packages: {skipped}"
    names = {deps.canonical(deps.requirement_name(r)) for r in reqs}
    assert not names & {"torch", "numpy", "simpleitk", "vtk"}
    assert deps.split_protected(["numpy>=2", "monai", "SimpleITK"]) == (["monai"], ["numpy>=2", "SimpleITK"])


def test_terminology_comes_from_the_library():
    """The module names, colours and tags its segments with the library's definitions (one
    source of truth: ``LiverTumorSegLib.terminology``, as the library's .seg.nrrd writer)."""
    import inspect

    from LiverTumorSegCore import mrml
    from LiverTumorSegLib import terminology

    default = inspect.signature(mrml.import_labels_into_segmentation).parameters["definitions"].default
    assert default is terminology.SEGMENTS
    assert not (MODULE_DIR / "LiverTumorSegCore" / "terminology.py").exists()


def test_terminology_entry_tags():
    from LiverTumorSegLib.terminology import LIVER, LIVER_TUMOR, parse_terminology_string

    liver = parse_terminology_string(LIVER.terminology_string)
    tumour = parse_terminology_string(LIVER_TUMOR.terminology_string)
    assert liver["category"][1] == "123037004" and liver["type"][1] == "10200004" and liver["region"] is None
    assert tumour["category"][1] == "49755003" and tumour["type"][1] == "4147007"
    assert tumour["region"] == ("SCT", "10200004", "Liver")
    assert tumour["type_modifier"] is None and tumour["region_modifier"] is None
    assert "3D Slicer General Anatomy" in liver["context"] and liver["anatomic_context"]
    assert LIVER.terminology_string.count("~") == 6
    with pytest.raises(ValueError):
        parse_terminology_string("only~three~fields")


def test_module_errors_build_on_the_library_errors():
    from LiverTumorSegCore import errors
    from LiverTumorSegLib import errors as lib

    assert issubclass(errors.ModuleError, lib.LiverTumorSegError)
    for mine, theirs in ((errors.InputVolumeError, lib.InputError), (errors.OutputSegmentationError, lib.OutputError),
                         (errors.SegmentationExistsError, lib.OutputError), (errors.ModelError, lib.WeightsError),
                         (errors.RunCancelled, lib.Cancelled)):
        assert issubclass(mine, errors.ModuleError) and issubclass(mine, theirs), mine
    exc = errors.RunError("the run\n   failed")
    assert str(exc) == "the run failed" and exc.exit_code == 2
    assert errors.RunCancelled("stop").exit_code == 130


# ------------------------------------------------------------------------------------------ runner
def test_runner_streams_json_lines_and_reports_errors(tmp_path):
    from LiverTumorSegCore.runner import FAILED, SUCCEEDED, ProcessRunner

    script = tmp_path / "child.py"
    script.write_text(
        "import json, sys\n"
        "print(json.dumps({'phase': 'read', 'fraction': 0.1, 'message': 'x', 'eta_s': 3}), flush=True)\n"
        "print('plain text', flush=True)\n"
        "print(json.dumps({'event': 'done', 'report': {}}), flush=True)\n"
        "sys.exit(int(sys.argv[1]))\n")
    r = ProcessRunner([sys.executable, str(script), "0"]).start()
    events = []
    assert r.wait(timeout=30, callback=events.append) == SUCCEEDED
    assert [e["event"] for e in events] == ["progress", "log", "done", "exit"]
    r = ProcessRunner([sys.executable, "-c", "import sys; print('livertumorseg: error: input not found: x.nrrd',"
                                             " file=sys.stderr); sys.exit(2)"]).start()
    assert r.wait(timeout=30) == FAILED and r.message == "input not found: x.nrrd"


def test_runner_poll_never_blocks(tmp_path):
    from LiverTumorSegCore.runner import ProcessRunner

    r = ProcessRunner([sys.executable, "-c", "import time; time.sleep(30)"]).start()
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            assert r.poll() == []
        assert time.perf_counter() - t0 < 0.5
    finally:
        r.cancel()
    r.wait(timeout=30)
    assert r.state == "cancelled"


def test_exit_descriptions():
    from LiverTumorSegCore.runner import describe_exit

    assert "out of memory" in describe_exit(-9)
    assert "segmentation fault" in describe_exit(-11)
    assert "out of memory" in describe_exit(1, "torch.OutOfMemoryError: CUDA out of memory")
    assert "exit status 3" in describe_exit(3)


# ------------------------------------------------------------------------------------------ models folder
def _fake_weights(folder: Path, name="model", sha=None, payload=b"weights-bytes"):
    folder.mkdir(parents=True, exist_ok=True)
    w = folder / f"{name}.safetensors"
    w.write_bytes(payload)
    meta = {"format_version": 1, "name": name, "version": "1.0", "model_config": {},
            "sha256": sha or hashlib.sha256(payload).hexdigest()}
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return w


def test_model_store_imports_only_verified_weights(tmp_path):
    from LiverTumorSegCore.errors import ModelError
    from LiverTumorSegCore.model_store import ModelStore, format_size

    store = ModelStore(tmp_path / "models")
    assert store.models() == [] and store.size_bytes() == 0
    good = _fake_weights(tmp_path / "usb", "liver_v2")
    info = store.import_weights(good)
    assert info.name == "liver_v2" and info.version == "1.0"
    assert (tmp_path / "models" / "liver_v2.json").is_file()
    assert store.import_weights(good).name == "liver_v2"  # idempotent
    tampered = _fake_weights(tmp_path / "bad", "evil", sha="0" * 64)
    with pytest.raises(ModelError, match="Checksum mismatch"):
        store.import_weights(tampered)
    (tmp_path / "bad" / "evil.json").unlink()
    with pytest.raises(ModelError, match="sidecar"):
        store.import_weights(tampered)
    other = _fake_weights(tmp_path / "other", "liver_v2", payload=b"different")
    with pytest.raises(ModelError, match="already in the models folder"):
        store.import_weights(other)
    assert [m.name for m in store.models()] == ["liver_v2"]
    assert not list((tmp_path / "models").glob("*.part"))
    assert not list((tmp_path / "models").glob(".*"))  # no temporary file of the atomic copy left
    assert format_size(store.size_bytes()).endswith("B")
    store.delete("liver_v2")
    assert store.models() == []


def test_gpu_warning_and_options():
    from LiverTumorSegCore.deps import gpu_warning
    from LiverTumorSegCore.job import SegmentationOptions, format_eta

    assert gpu_warning("cpu", None) == ""
    assert "No NVIDIA GPU" in gpu_warning("GPU", None)
    assert "only 4.0 GiB" in gpu_warning("auto", [4.0])
    assert gpu_warning("auto", [24.0]) == ""
    assert SegmentationOptions.create(device="GPU").segment.device == "cuda"
    with pytest.raises(ValueError):
        SegmentationOptions.create(device="tpu")
    args = SegmentationOptions.create(largest_liver_component=False, tumour_inside_liver=False).cli_args()
    assert "--no-largest-component" in args and "--no-tumour-in-liver" in args and "--model" not in args
    assert format_eta(75) == "1 min 15 s" and format_eta(None) == "" and format_eta(3700) == "1 h 01 min"


def test_batch_script_help_runs_without_slicer():
    out = subprocess.run([sys.executable, str(MODULE_DIR / "Scripts" / "batch_segment.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--input-folder" in out.stdout


def test_parameter_node_option_table_is_complete():
    """Every library option is either mapped from a parameter-node field (one table) or listed as
    deliberately hidden; the mapped fields exist in the parameter node with the library's defaults."""
    from LiverTumorSegCore.job import DEVICES, HIDDEN_OPTIONS, PARAMETER_NODE_OPTIONS
    from LiverTumorSegLib.options import SegmentOptions
    from LiverTumorSegLib.utils.options import option_fields

    library = option_fields(SegmentOptions)
    exposed = set(PARAMETER_NODE_OPTIONS.values())
    assert len(exposed) == len(PARAMETER_NODE_OPTIONS), "two parameters set the same option"
    assert not exposed & set(HIDDEN_OPTIONS), f"both exposed and hidden: {exposed & set(HIDDEN_OPTIONS)}"
    assert exposed | set(HIDDEN_OPTIONS) == set(library), (
        f"neither exposed nor hidden: {sorted(set(library) - exposed - set(HIDDEN_OPTIONS))}; "
        f"not library options: {sorted((exposed | set(HIDDEN_OPTIONS)) - set(library))}")
    node = next(n for n in _module_ast().body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorSegParameterNode")
    defaults = {s.target.id: ast.literal_eval(s.value) for s in node.body
                if isinstance(s, ast.AnnAssign) and s.value is not None}
    for name, option in PARAMETER_NODE_OPTIONS.items():
        assert name in defaults, f"{name} is not a parameter-node field with a default"
        value = DEVICES[defaults[name].lower()] if option == "device" else defaults[name]
        assert value == library[option].default, (name, value, library[option].default)


def test_tumour_terminology_is_in_the_general_anatomy_context_and_neoplasm_still_reads():
    """Slicer's SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json (checked in Slicer's
    source) has Morphologically Altered Structure / Mass (SCT 4147007) but not Neoplasm
    (SCT 108369006, DICOM master list only): the tumour is written as Mass in that context;
    segmentations written before (Neoplasm) are still recognised as tumour."""
    from LiverTumorSegLib.terminology import LIVER_TUMOR, SLICER_CONTEXT, label_for_segment

    assert SLICER_CONTEXT == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert LIVER_TUMOR.type == ("SCT", "4147007", "Mass")
    assert LIVER_TUMOR.terminology["contextName"] == SLICER_CONTEXT
    assert "108369006" not in LIVER_TUMOR.terminology_string
    old = {"name": "Segment_2", "terminology": {"type": ["SCT", "108369006", "Neoplasm"]}}
    assert label_for_segment(old) == 2
    assert label_for_segment({"name": "x", "terminology": {"type": ["SCT", "4147007", "Mass"]}}) == 2


def test_pip_plan_protects_and_constrains_bundled_packages(monkeypatch):
    """scipy (bundled with Slicer) is installed only when missing and never upgraded; numpy,
    SimpleITK and torch never go through pip; the constraints pin numpy, SimpleITK, scipy and
    torch at their installed versions (read from package metadata)."""
    from importlib import metadata

    from LiverTumorSegCore import deps

    reqs = ["scipy>=1.10", "monai>=1.3", "numpy>=1", "torch", "livertumorseg-no-such-package>=1", "tqdm>=999"]
    plan = deps.pip_plan(reqs, upgrade=False)
    assert plan == {"install": ["livertumorseg-no-such-package>=1", "tqdm>=999"], "upgrade": [],
                    "kept": ["scipy>=1.10"], "skipped": ["numpy>=1", "torch"]}
    plan = deps.pip_plan(reqs, upgrade=True)
    assert plan["upgrade"] == ["monai>=1.3"] and plan["kept"] == ["scipy>=1.10"]
    assert "scipy>=1.10" not in plan["install"] + plan["upgrade"]
    # a custom Slicer build without scipy: installed (not upgraded) then
    real = deps.installed_version
    monkeypatch.setattr(deps, "installed_version", lambda n: None if n.lower() == "scipy" else real(n))
    assert "scipy>=1.10" in deps.pip_plan(reqs, upgrade=True)["install"]
    monkeypatch.setattr(deps, "installed_version", real)
    pins = dict(line.split("==") for line in deps.constraints_text().splitlines())
    for name in ("numpy", "SimpleITK", "scipy", "torch"):
        assert pins[name] == metadata.version(name), name
    # every requirement the module lists is either installable or deliberately kept
    listed = deps.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert "scipy" in {deps.canonical(deps.requirement_name(r)) for r in listed}


def test_torch_status_reads_metadata_without_importing_torch(tmp_path):
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from LiverTumorSegCore import deps\n"
            "from importlib import metadata\n"
            "s = deps.torch_status()\n"
            "assert s == ('ok', metadata.version('torch')), s\n"
            "assert deps.torch_status('>=999')[0] == 'too_old'\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n") % str(MODULE_DIR)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_dependency_code_uses_real_slicer_apis():
    """Checked against Slicer's source: there is no ``slicer.pydeps``; ``slicer.packaging`` (5.12+)
    is not imported by ``slicer`` itself; PyTorchUtils' ``torchInstalled()`` imports torch and
    ``installTorch`` never upgrades."""
    text = MODULE_FILE.read_text()
    assert "pydeps" not in text
    assert "import slicer.packaging" in text and "slicer.util.pip_install" in text
    assert "torchInstalled(" not in text
    assert "deps.torch_status()" in text
    tree = _module_ast()
    tries = [n for n in ast.walk(tree) if isinstance(n, ast.Try)]
    assert any(isinstance(s, ast.Import) and s.names[0].name == "slicer.packaging" for t in tries for s in t.body)


def test_help_and_acknowledgement_are_true():
    text = MODULE_FILE.read_text()
    assert "trained on the LiTS" not in text
    assert "synthetic CT" in text and "MODEL_CARD.md" in text
    assert "https://github.com/livertumorseg/SlicerLiverTumorSeg\\\">documentation" not in text
    helps = re.findall(r"helpText = _\((.*?)\)\.format", text, re.S)
    assert helps and "http" not in helps[0]
    assert (REPO / "LiverTumorSegLib" / "resources" / "models" / "MODEL_CARD.md").is_file()
    assert (MODULE_DIR / "README.md").is_file()
    card = (REPO / "LiverTumorSegLib" / "resources" / "models" / "MODEL_CARD.md").read_text()
    assert "synthetic" in card.lower()


def test_tumour_sensitivity_slider_is_in_the_panel_and_wired():
    """Results panel: a "Tumour sensitivity" check box (off = argmax) and a 0.05-0.95 slider; the
    widget connects both to the handler that stores tumourThreshold and re-thresholds through
    the logic (LiverTumorSegCore.sensitivity), never running the network."""
    widgets = _ui_widgets()
    assert widgets.get("tumourThresholdSlider") == "ctkSliderWidget"
    assert widgets.get("tumourSensitivityCheckBox") == "QCheckBox"
    slider = [w for w in _ui_tree().iter("widget") if w.get("name") == "tumourThresholdSlider"][0]
    props = {p.get("name"): (p.findtext("double") or p.findtext("number") or p.findtext("bool"))
             for p in slider.findall("property")}
    assert (float(props["minimum"]), float(props["maximum"])) == (0.05, 0.95)
    assert props["tracking"] == "false"  # re-threshold when the slider is released
    results = [w for w in _ui_tree().iter("widget") if w.get("name") == "resultsCollapsibleButton"][0]
    assert any(w.get("name") == "tumourThresholdSlider" for w in results.iter("widget"))
    source = MODULE_FILE.read_text()
    assert 'tumourThresholdSlider.connect("valueChanged(double)", self.onTumourSensitivityChanged)' in source
    assert 'tumourSensitivityCheckBox.connect("toggled(bool)", self.onTumourSensitivityChanged)' in source
    assert "self.logic.setTumourThreshold(" in source and "self.logic.keepProbabilities(job)" in source
