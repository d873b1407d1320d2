"""Python packages the inference needs inside Slicer: torch through the PyTorch extension's
``PyTorchUtils`` (it picks the CUDA build that fits the driver), the rest through Slicer's pip helper.

No dialog is ever shown when Slicer runs without a main window or in testing mode: a confirm box
under ``--no-main-window`` would hang a batch job forever.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable

from .errors import GTVAutoSegError

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.4"
# distribution name -> requirement, as in pyproject.toml (SimpleITK and numpy come with Slicer).
PIP_REQUIREMENTS = {
    "monai": "monai>=1.4",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "pynrrd": "pynrrd>=1.0",
    "slicerio": "slicerio>=1.0",
    "SimpleITK": "SimpleITK>=2.3",
    "numpy": "numpy>=1.24",
}


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


def ensureDependencies(confirm: Callable[[str], bool] | None = None) -> None:
    """Install what is missing into Slicer's Python (used by the CLI subprocess too).

    Args:
        confirm: asked once with a description of what will be installed; only called when
            Slicer is interactive. Headless, installation goes ahead without asking.

    Raises:
        GTVAutoSegError: the user declined, the PyTorch extension is missing, or an install failed.
    """
    missing = missingRequirements()
    if not missing:
        return
    import slicer

    interactive = isInteractive()
    if interactive and confirm is not None:
        if not confirm("GTVAutoSeg needs these Python packages, which will be downloaded and installed "
                       f"now (this may take several minutes): {', '.join(missing)}"):
            raise GTVAutoSegError(f"required packages are not installed: {', '.join(missing)}")
    logger.info("GTVAutoSeg: installing %s", ", ".join(missing))
    if missing[0].startswith("torch"):
        try:
            import PyTorchUtils
        except ImportError:
            raise GTVAutoSegError("the PyTorch extension is needed: install 'PyTorch' from the Extensions Manager") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        # askConfirmation=False: we asked above, or we are headless and must not ask at all.
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise GTVAutoSegError("PyTorch could not be installed")
        missing = missing[1:]
    if missing:
        try:
            slicer.util.pip_install(missing)
        except Exception as exc:  # pip's CalledProcessError, network errors...
            raise GTVAutoSegError(f"installing {', '.join(missing)} failed: {exc}") from None
    still = missingRequirements()
    if still:
        raise GTVAutoSegError(f"still missing after installation: {', '.join(still)} (restart Slicer and try again)")
