"""Python packages the inference needs inside Slicer, and nothing more.

- torch comes only through the PyTorch extension's ``PyTorchUtils``, which picks the build that
  fits the GPU driver; nothing here ever asks pip for torch, so pip cannot swap that build.
- Packages Slicer ships (:data:`SLICER_SHIPPED`: numpy, scipy, SimpleITK, VTK...) are never
  installed: pip would replace Slicer's own builds (SimpleITK >= 2.3 over Slicer's) and can break
  Slicer. The inference process imports nothing else than these, torch and :data:`PIP_REQUIREMENTS`
  (checked by running it with every other package hidden, tests/test_slicer_dependencies.py).
- MONAI, matplotlib, tqdm and slicerio serve training, reports and file checks only: the
  inference never imports them, so they are not installed either.

No dialog is ever shown when Slicer runs without a main window or in testing mode: a confirm box
under ``--no-main-window`` would hang a batch job forever.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable

from .errors import GTVAutoSegError

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.4"
# distribution name -> requirement: what the inference imports beyond torch and what Slicer ships.
PIP_REQUIREMENTS = {
    "pynrrd": "pynrrd>=1.0",  # rewrites a .seg.nrrd that Slicer saved onto the input's grid (batch script)
    # ISA-L's gzip: the .seg.nrrd written 15x as fast as zlib would (lung2's mask: 4 ms against 53);
    # wheels for Windows, macOS and Linux. Without it zlib writes the same file, slower.
    "isal": "isal>=1.6",
    # Every "Segment GTV" click is a new inference process: with ONNX Runtime it does not import
    # torch (about 1 s of each click); onnx exports the model once, on the first click.
    "onnxruntime": "onnxruntime>=1.17",
    "onnx": "onnx>=1.15",
}
# What the DICOM SEG export adds (installed when the export is first used; RTSTRUCT needs only pydicom).
EXPORT_REQUIREMENTS = {
    "highdicom": "highdicom>=0.28",
}
# Distributions in 3D Slicer's own Python (5.10 and later; SuperBuild External_python-*.cmake).
SLICER_SHIPPED = frozenset({
    "numpy", "scipy", "SimpleITK", "vtk", "pydicom", "pillow", "requests", "urllib3", "certifi", "idna",
    "charset-normalizer", "packaging", "pip", "setuptools", "wheel", "six", "PyGithub", "GitPython",
    "dicomweb-client", "pyparsing",
})


def isInteractive() -> bool:
    """True only in a Slicer with a main window that is not running tests."""
    try:
        import slicer
    except ImportError:
        return False
    app = getattr(slicer, "app", None)
    if app is None:
        return False
    options = app.commandOptions()
    return not (options.noMainWindow or app.testingEnabled())


def _satisfied(distribution: str, requirement: str) -> bool:
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: presence is all we can check
        return True
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def missingRequirements() -> list[str]:
    """Requirements (pip syntax) not met in this interpreter, torch first."""
    missing = []
    if not _satisfied("torch", "torch" + TORCH_REQUIREMENT):
        missing.append("torch" + TORCH_REQUIREMENT)
    missing += [req for dist, req in PIP_REQUIREMENTS.items() if not _satisfied(dist, req)]
    return missing


def ensureDependencies(confirm: Callable[[str], bool] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Install what is missing into Slicer's Python (used by the inference process too).

    Args:
        confirm: asked once with a description of what will be installed; only called when
            Slicer is interactive. Headless, installation goes ahead without asking.
        log: receives one line per step and its duration (the module's log panel); pip's and
            PyTorchUtils' own output goes to Slicer's log and Python console.

    Raises:
        GTVAutoSegError: the user declined, the PyTorch extension is missing, or an install failed.
    """
    missing = missingRequirements()
    if not missing:
        return
    import slicer

    def say(line: str) -> None:
        logger.info("GTVAutoSeg: %s", line)
        if log is not None:
            log(line)

    if isInteractive() and confirm is not None:
        if not confirm("GTVAutoSeg needs these Python packages, which will be downloaded and installed "
                       f"now (this may take several minutes): {', '.join(missing)}"):
            raise GTVAutoSegError(f"required packages are not installed: {', '.join(missing)}")
    if missing[0].startswith("torch"):
        try:
            import PyTorchUtils
        except ImportError:
            raise GTVAutoSegError("the PyTorch extension is needed: install 'PyTorch' from the Extensions Manager") from None
        say(f"installing torch{TORCH_REQUIREMENT} through the PyTorch extension (several minutes; output in the Python console)")
        started = time.monotonic()
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        # askConfirmation=False: we asked above, or we are headless and must not ask at all.
        try:
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        except Exception as exc:  # light-the-torch / pip failures
            raise GTVAutoSegError(f"installing PyTorch failed: {exc}") from None
        if torch is None:
            raise GTVAutoSegError("PyTorch could not be installed")
        say(f"PyTorch {getattr(torch, '__version__', '')} installed in {time.monotonic() - started:.0f} s")
        missing = missing[1:]
    if missing:
        shipped = [req for req in missing if _distribution(req) in SLICER_SHIPPED]
        if shipped:  # a coding error, never a user's: refuse rather than replace Slicer's own packages
            raise GTVAutoSegError(f"refusing to pip-install {', '.join(shipped)}: Slicer ships it")
        say(f"installing {', '.join(missing)} with pip")
        started = time.monotonic()
        try:
            slicer.util.pip_install(missing)
        except Exception as exc:  # pip's CalledProcessError, network errors...
            raise GTVAutoSegError(f"installing {', '.join(missing)} failed: {exc}") from None
        say(f"installed {', '.join(missing)} in {time.monotonic() - started:.0f} s")
    still = missingRequirements()
    if still:
        raise GTVAutoSegError(f"still missing after installation: {', '.join(still)} (restart Slicer and try again)")


def ensureExportDependencies(confirm: Callable[[str], bool] | None = None,
                             log: Callable[[str], None] | None = None) -> None:
    """Install what the DICOM export needs (:data:`EXPORT_REQUIREMENTS`) into Slicer's Python, as
    :func:`ensureDependencies` does: asking only when interactive, never replacing what Slicer ships.

    Raises:
        GTVAutoSegError: the user declined or the install failed.
    """
    missing = [req for dist, req in EXPORT_REQUIREMENTS.items() if not _satisfied(dist, req)]
    if not missing:
        return
    import slicer

    if isInteractive() and confirm is not None:
        if not confirm(f"The DICOM export needs these Python packages, which will be installed now: {', '.join(missing)}"):
            raise GTVAutoSegError(f"required packages are not installed: {', '.join(missing)}")
    if log is not None:
        log(f"installing {', '.join(missing)} with pip")
    try:
        slicer.util.pip_install(missing)
    except Exception as exc:  # pip's CalledProcessError, network errors...
        raise GTVAutoSegError(f"installing {', '.join(missing)} failed: {exc}") from None
    still = [req for dist, req in EXPORT_REQUIREMENTS.items() if not _satisfied(dist, req)]
    if still:
        raise GTVAutoSegError(f"still missing after installation: {', '.join(still)} (restart Slicer and try again)")


def _distribution(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if ch in "<>=!~[; ":
            return requirement[:i]
    return requirement
