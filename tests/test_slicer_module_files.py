"""The parts of the Slicer module that need Qt cannot run here; these tests read them instead: the
.ui file, the parameter node it binds to, the widget's references into it, the CMake files, the
icon and the terminology. Plus the no-dialog-when-headless rule for dependency installation.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GTVAutoSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "GTVAutoSeg.ui"
MODULE_FILE = MODULE_DIR / "GTVAutoSeg.py"
sys.path.insert(0, str(MODULE_DIR))

QT_CLASSES_OK = {"QWidget", "QLabel", "QComboBox", "QCheckBox", "QPushButton", "QProgressBar", "QListWidget",
                 "QDoubleSpinBox", "QSpinBox", "QTextBrowser", "QGroupBox", "QLineEdit", "QPlainTextEdit"}


def _uiWidgets(root) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in root.iter("widget")}


def _property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _bindings(root) -> dict[str, ET.Element]:
    """parameter name -> widget, from the ``SlicerParameterName`` dynamic properties."""
    bound = {}
    for widget in root.iter("widget"):
        prop = _property(widget, "SlicerParameterName")
        if prop is not None:
            assert prop.get("stdset") == "0", "a dynamic property needs stdset=\"0\""
            name = prop.find("string").text
            assert name not in bound, f"parameter {name} bound twice"
            bound[name] = widget
    return bound


def _parameterFields(tree: ast.Module) -> tuple[str, dict[str, ast.expr]]:
    """The class decorated with ``parameterNodeWrapper``: its name and annotated fields."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            fields = {stmt.target.id: stmt.annotation for stmt in node.body
                      if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
            return node.name, fields
    raise AssertionError("no @parameterNodeWrapper class in GTVAutoSeg.py")


def _enumClasses(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)
            and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases)}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()  # raises on malformed XML


@pytest.fixture(scope="module")
def moduleAst():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def test_ui_is_well_formed_designer_file(ui):
    assert ui.tag == "ui" and ui.get("version") == "4.0"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "GTVAutoSeg"
    widgets = [w.get("name") for w in ui.iter("widget")]
    assert len(widgets) == len(set(widgets)), "object names must be unique"
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    for widget in ui.iter("widget"):
        cls = widget.get("class")
        assert cls in QT_CLASSES_OK or cls in declared, f"{cls} is neither a Qt class nor a declared custom widget"
    names = set(widgets)
    for connection in ui.iter("connection"):
        assert connection.find("sender").text in names and connection.find("receiver").text in names
    # The controls are all there.
    for required in ("inputVolumeSelector", "modelComboBox", "modelCardTextBrowser", "deviceComboBox",
                     "thresholdSliderWidget", "outputSegmentationSelector", "applyButton", "progressBar",
                     "statusLabel", "show3DCheckBox", "reviewListWidget", "resegmentButton", "logTextEdit"):
        assert required in names
    assert _property(_uiWidgets(ui)["applyButton"], "text").find("string").text == "Segment GTV"


def test_every_bound_parameter_exists_with_a_matching_type(ui, moduleAst):
    _, fields = _parameterFields(moduleAst)
    enums = _enumClasses(moduleAst)
    bound = _bindings(ui)
    assert bound, "the .ui binds nothing"
    for name, widget in bound.items():
        assert name in fields, f".ui binds '{name}', which the parameter node does not define"
        cls, annotation = widget.get("class"), ast.unparse(fields[name])
        if cls == "qMRMLNodeComboBox":
            nodeTypes = [s.text for s in _property(widget, "nodeTypes").find("stringlist")]
            assert annotation in nodeTypes, f"{name}: {annotation} not in the selector's node types {nodeTypes}"
        elif cls == "QCheckBox":
            assert annotation == "bool", f"{name}: a check box needs a bool, not {annotation}"
        elif cls == "ctkSliderWidget":
            # A slider needs a bounded float (parameterNodeWrapper refuses an unbounded one).
            assert re.fullmatch(r"Annotated\[float, .*WithinRange\(.*\)\]", annotation), f"{name}: {annotation}"
        elif cls in ("QDoubleSpinBox",):
            assert annotation == "float" or annotation.startswith("Annotated[float"), f"{name}: {annotation}"
        elif cls == "QComboBox":
            assert annotation in enums or "Choice(" in annotation, f"{name}: a combo box needs an enum or Choice"
        else:
            pytest.fail(f"{name}: no parameterNodeWrapper connector for {cls}")
    # Every parameter is bound, except the model and the device, whose selectors are filled in code
    # (from Models.json, and from the devices torch sees).
    assert set(fields) - set(bound) == {"model", "device"}
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "_parameterNode.model" in source and "_parameterNode.device" in source


def test_widget_refers_only_to_widgets_that_exist(ui):
    names = set(_uiWidgets(ui))
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widget?"
    assert used <= names, f"GTVAutoSeg.py uses widgets missing from the .ui: {sorted(used - names)}"


def test_module_file_has_the_four_classes(moduleAst):
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in moduleAst.body if isinstance(node, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["GTVAutoSeg"]
    assert "ScriptedLoadableModuleWidget" in classes["GTVAutoSegWidget"]
    assert {"ScriptedLoadableModuleLogic", "SegmentationLogic"} <= set(classes["GTVAutoSegLogic"])
    assert "ScriptedLoadableModuleTest" in classes["GTVAutoSegTest"]
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "Shi et al." in source and "2024" in source  # the acknowledgement cites the paper
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in source


def test_cmake_files_describe_the_extension_and_list_existing_files():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', top), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(GTVAutoSeg)" in top and "find_package(Slicer REQUIRED)" in top

    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module

    def block(name: str) -> list[str]:
        body = re.search(rf"set\({name}\n(.*?)\n  \)", module, re.S).group(1)
        return [line.strip().replace("${MODULE_NAME}", "GTVAutoSeg") for line in body.splitlines() if line.strip()]

    scripts, resources = block("MODULE_PYTHON_SCRIPTS"), block("MODULE_PYTHON_RESOURCES")
    for listed in scripts + resources:
        assert (MODULE_DIR / listed).is_file(), f"CMakeLists.txt lists a missing file: {listed}"
    packageFiles = {f"GTVAutoSegSlicerLib/{p.name}" for p in (MODULE_DIR / "GTVAutoSegSlicerLib").glob("*.py")}
    assert packageFiles <= set(scripts), f"not listed in CMakeLists.txt: {sorted(packageFiles - set(scripts))}"
    resourceFiles = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert resourceFiles == set(resources)
    assert "GTVAutoSegLib/*.py" in module and "Resources/Models.json" in module


def test_only_the_module_is_installed_at_slicer_s_module_root():
    """Slicer loads every .py at the top of qt-scripted-modules as a module: only GTVAutoSeg.py may go
    there (a batch script there logs "class batch_segment was not found" at every start)."""
    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS\n(.*?)\n  \)", module, re.S).group(1).split()
    assert [s for s in scripts if "/" not in s] == ["${MODULE_NAME}.py"]
    assert [p.name for p in MODULE_DIR.glob("*.py")] == ["GTVAutoSeg.py"]
    # The batch script is a resource; the library goes into its own package folder.
    assert "Resources/Scripts/batch_segment.py" in module and (MODULE_DIR / "Resources/Scripts/batch_segment.py").is_file()
    assert "${CMAKE_CURRENT_BINARY_DIR}/${_file}" in module and "RELATIVE ${PROJECT_SOURCE_DIR}" in module


def test_slicer_s_build_runs_the_self_test_and_pytest_only_when_asked():
    testing = (ROOT / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"option\(GTVAutoSeg_ENABLE_PYTEST .* OFF\)", testing)
    assert testing.index("if(GTVAutoSeg_ENABLE_PYTEST)") < testing.index("add_test(")
    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module


def test_icon_is_a_128_pixel_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "GTVAutoSeg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_every_target_terminology_resolves_in_slicer_terminology_logic(tmp_path):
    """The segments' terminology entries resolve in Slicer's terminology logic (the selector's
    backend) once the module has loaded its context: right type, Slicer label and colour."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from GTVAutoSegLib.segfile import TARGET_TYPES, TERMINOLOGY_CONTEXT
    from GTVAutoSegSlicerLib.terminology import registerTerminology, segmentTerminology

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert registerTerminology(logic, tmp_path) == TERMINOLOGY_CONTEXT
    for target, kind in (("GTV", "GTV"), ("PTV70", "PTV"), ("CTV_High", "CTV"), ("ITV", "ITV")):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(segmentTerminology(target, "head_and_neck"), entry)
        assert logic.UpdateEntryFromLoadedTerminologies(entry, [TERMINOLOGY_CONTEXT], [])
        assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        found = entry.GetTypeObject()
        assert (found.GetCodeValue(), found.GetSlicerLabel()) == (TARGET_TYPES[kind].code.value, kind)
        assert found.GetRecommendedDisplayRGBValue() == tuple(round(255 * c) for c in TARGET_TYPES[kind].color)
    # The control: a code this context does not hold finds no Slicer label (so the checks above can fail).
    unknown = slicer.vtkSlicerTerminologyEntry()
    logic.DeserializeTerminologyEntry(segmentTerminology("GTV").replace("228791009", "99999999"), unknown)
    logic.UpdateEntryFromLoadedTerminologies(unknown, [TERMINOLOGY_CONTEXT], [])
    assert unknown.GetTypeObject().GetSlicerLabel() is None


# ------------------------------------------------------------------------------ no dialogs headless


def _fakeApp(noMainWindow: bool, testing: bool):
    return SimpleNamespace(commandOptions=lambda: SimpleNamespace(noMainWindow=noMainWindow),
                           testingEnabled=lambda: testing)


@pytest.mark.parametrize("noMainWindow, testing, interactive",
                         [(True, False, False), (False, True, False), (False, False, True)])
def test_dependency_install_asks_only_when_interactive(monkeypatch, noMainWindow, testing, interactive):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from GTVAutoSegSlicerLib import dependencies

    monkeypatch.setattr(slicer, "app", _fakeApp(noMainWindow, testing), raising=False)
    installed, asked = [], []
    state = {"missing": ["pynrrd>=1.0"]}
    monkeypatch.setattr(dependencies, "missingRequirements", lambda: list(state["missing"]))

    def pipInstall(requirements):
        installed.append(list(requirements))
        state["missing"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pipInstall)
    assert dependencies.isInteractive() is interactive

    dependencies.ensureDependencies(confirm=lambda text: asked.append(text) or True)

    assert bool(asked) is interactive  # a headless or testing Slicer is never asked
    assert installed == [["pynrrd>=1.0"]]


def test_declined_install_is_an_error_not_a_hang(monkeypatch):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from GTVAutoSegSlicerLib import GTVAutoSegError, dependencies

    monkeypatch.setattr(slicer, "app", _fakeApp(False, False), raising=False)
    monkeypatch.setattr(dependencies, "missingRequirements", lambda: ["pynrrd>=1.0"])
    monkeypatch.setattr(slicer.util, "pip_install", lambda r: pytest.fail("must not install after a refusal"))
    with pytest.raises(GTVAutoSegError, match="pynrrd"):
        dependencies.ensureDependencies(confirm=lambda text: False)


def test_this_environment_meets_the_requirements():
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from GTVAutoSegSlicerLib.dependencies import isInteractive, missingRequirements

    assert missingRequirements() == []
    assert isInteractive() is False  # slicer-core has no application


def test_models_json_is_read_without_torch(tmp_path):
    from GTVAutoSegSlicerLib.models import listModels, modelsJsonPath

    assert modelsJsonPath() == ROOT / "Resources" / "Models.json"
    (tmp_path / "card.md").write_text("# Lung GTV\nTrained on ...")
    models = tmp_path / "Models.json"
    models.write_text(json.dumps({"models": [
        {"name": "lung", "version": "1.0", "file": "lung.pt", "sha256": "0" * 64, "title": "Lung GTV",
         "card": "card.md", "default": True},
        {"name": "hn", "version": "0.3", "file": "hn.pt", "sha256": "1" * 64, "card": "Head and neck, inline card"},
    ]}))
    entries = listModels(models)
    assert [(m.name, m.default) for m in entries] == [("lung", True), ("hn", False)]
    assert entries[0].display_name() == "Lung GTV (1.0)"
    assert entries[0].card_text(tmp_path).startswith("# Lung GTV")
    assert entries[1].card_text(tmp_path) == "Head and neck, inline card"
    assert listModels(tmp_path / "absent.json") == []
