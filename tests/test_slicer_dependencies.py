"""What the module installs into Slicer's Python: only what inference imports, never a package Slicer
ships, torch only through the PyTorch extension."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

from GTVAutoSegSlicerLib import dependencies  # noqa: E402
from GTVAutoSegSlicerLib.dependencies import PIP_REQUIREMENTS, SLICER_SHIPPED, TORCH_REQUIREMENT  # noqa: E402


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(roots: set[str]) -> set[str]:
    """The distributions ``roots`` need, transitively (extras left out), as installed here."""
    seen, todo = set(), [_canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(_canonical(requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0]
                                   .split("=")[0].split("!")[0].split("~")[0].strip()))
    return seen


def test_the_list_holds_nothing_slicer_ships_and_no_torch_or_monai():
    shipped = {_canonical(n) for n in SLICER_SHIPPED}
    assert not {_canonical(n) for n in PIP_REQUIREMENTS} & shipped
    assert {"torch", "monai", "simpleitk", "numpy"}.isdisjoint(_canonical(n) for n in PIP_REQUIREMENTS)
    assert all(req.startswith(dist) for dist, req in PIP_REQUIREMENTS.items())


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_inference_runs_with_every_other_package_hidden(tmp_path, monkeypatch, engine):
    """The CLI, as the module runs it, with only the standard library, torch (and what it needs),
    the packages Slicer ships and PIP_REQUIREMENTS importable: if inference needed anything else
    (MONAI, matplotlib, tqdm, slicerio...), the module's installer would leave it broken. Both
    engines: ONNX Runtime's export (torch + onnx) and its run included."""
    monkeypatch.setenv("GTVAUTOSEG_CACHE", str(tmp_path / "cache"))
    from GTVAutoSegLib.bundle import ModelBundle, save_bundle
    from GTVAutoSegLib.models import NetConfig, build_network
    from GTVAutoSegLib.phantom import make_phantom
    from GTVAutoSegLib.preprocessing import PreprocessSpec

    ct, _ = make_phantom(shape=(6, 48, 48), spacing=(2.0, 2.0, 3.0), seed=1, tumour_slices=2)
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nrrd"))
    c, s = NetConfig("resnet18_classifier"), NetConfig("sanet")  # the shipped model's networks, untrained
    save_bundle(ModelBundle.from_networks(build_network(c), build_network(s), name="deps", version="0", classifier=c,
                                          segmenter=s, preprocess=PreprocessSpec(size=96), target="PTV70"),  # 96: SANet exports at multiples of 48
                tmp_path / "model.pt", half=True)
    # What Slicer ships counts as it is, not with its wheels' requirements: Slicer builds VTK itself,
    # while the vtk wheel here asks for matplotlib.
    allowed = _closure({"torch", *PIP_REQUIREMENTS}) | {_canonical(n) for n in SLICER_SHIPPED}
    owners = importlib.metadata.packages_distributions()
    hidden = sorted(module for module, dists in owners.items()
                    if module.isidentifier() and module != "GTVAutoSegLib"
                    and not any(_canonical(d) in allowed for d in dists))
    assert {"monai", "matplotlib", "tqdm", "slicerio", "nibabel"} <= set(hidden)  # the hiding can bite
    runner = textwrap.dedent(f"""
        import importlib.abc, sys
        HIDDEN = set({hidden!r})
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"{{name}} is hidden: Slicer would not have it", name=name)
        sys.meta_path.insert(0, Hide())
        from GTVAutoSegLib.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", runner, "segment", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "out"),
                           "--model", str(tmp_path / "model.pt"), "--device", "cpu", "--progress", "lines", "--name", "t",
                           "--engine", engine],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "t_report.json").read_text())
    assert report["slices_total"] == 6 and (tmp_path / "out" / "t.seg.nrrd").is_file()
    assert report["engine"] == engine


@pytest.fixture
def headlessSlicer(monkeypatch):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        commandOptions=lambda: types.SimpleNamespace(noMainWindow=True), testingEnabled=lambda: False), raising=False)
    return slicer


def test_torch_comes_through_pytorchutils_and_pip_gets_the_rest(headlessSlicer, monkeypatch):
    calls, lines = [], []
    state = {"missing": ["torch" + TORCH_REQUIREMENT, "pynrrd>=1.0"]}

    class FakeTorchLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append(("PyTorchUtils", askConfirmation, torchVersionRequirement))
            state["missing"] = [m for m in state["missing"] if not m.startswith("torch")]
            return types.SimpleNamespace(__version__="2.9.0+cu128")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeTorchLogic))
    monkeypatch.setattr(dependencies, "missingRequirements", lambda: list(state["missing"]))

    def pipInstall(requirements):
        calls.append(("pip", list(requirements)))
        state["missing"] = []

    monkeypatch.setattr(headlessSlicer.util, "pip_install", pipInstall)
    dependencies.ensureDependencies(confirm=lambda text: pytest.fail("headless: never ask"), log=lines.append)

    assert calls == [("PyTorchUtils", False, TORCH_REQUIREMENT), ("pip", ["pynrrd>=1.0"])]
    assert lines[0].startswith("installing torch>=2.4 through the PyTorch extension")
    assert lines[1].startswith("PyTorch 2.9.0+cu128 installed in")
    assert lines[2] == "installing pynrrd>=1.0 with pip" and lines[3].startswith("installed pynrrd>=1.0 in")


def test_failures_are_one_line_and_shipped_packages_are_refused(headlessSlicer, monkeypatch):
    from GTVAutoSegSlicerLib import GTVAutoSegError

    monkeypatch.setattr(dependencies, "missingRequirements", lambda: ["torch" + TORCH_REQUIREMENT])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(GTVAutoSegError, match="install 'PyTorch' from the Extensions Manager"):
        dependencies.ensureDependencies()

    monkeypatch.setattr(dependencies, "missingRequirements", lambda: ["pynrrd>=1.0"])

    def failingPip(requirements):
        raise subprocess.CalledProcessError(1, ["pip", "install", *requirements])

    monkeypatch.setattr(headlessSlicer.util, "pip_install", failingPip)
    with pytest.raises(GTVAutoSegError, match=r"^installing pynrrd>=1.0 failed: Command .* returned non-zero exit status 1\.$"):
        dependencies.ensureDependencies()

    monkeypatch.setattr(dependencies, "missingRequirements", lambda: ["SimpleITK>=2.3"])
    monkeypatch.setattr(headlessSlicer.util, "pip_install", lambda r: pytest.fail("Slicer's SimpleITK must stay"))
    with pytest.raises(GTVAutoSegError, match="refusing to pip-install SimpleITK>=2.3: Slicer ships it"):
        dependencies.ensureDependencies()


def test_the_dicom_export_installs_highdicom_only_when_missing_and_never_what_slicer_ships(headlessSlicer, monkeypatch):
    from GTVAutoSegSlicerLib import GTVAutoSegError

    shipped = {_canonical(n) for n in SLICER_SHIPPED}
    assert not {_canonical(n) for n in dependencies.EXPORT_REQUIREMENTS} & shipped
    calls = []
    monkeypatch.setattr(headlessSlicer.util, "pip_install", lambda r: calls.append(list(r)))
    dependencies.ensureExportDependencies(confirm=lambda text: pytest.fail("nothing to ask"))
    assert calls == []  # installed here (requirements.txt)

    state = {"installed": False}
    monkeypatch.setattr(dependencies, "_satisfied", lambda dist, req: state["installed"])

    def pipInstall(requirements):
        calls.append(list(requirements))
        state["installed"] = True

    monkeypatch.setattr(headlessSlicer.util, "pip_install", pipInstall)
    lines = []
    dependencies.ensureExportDependencies(confirm=lambda text: pytest.fail("headless: never ask"), log=lines.append)
    assert calls == [["highdicom>=0.28"]] and lines == ["installing highdicom>=0.28 with pip"]

    state["installed"] = False
    monkeypatch.setattr(headlessSlicer.util, "pip_install", lambda r: None)  # pip "succeeds" but nothing appears
    with pytest.raises(GTVAutoSegError, match="still missing after installation: highdicom>=0.28"):
        dependencies.ensureExportDependencies()
