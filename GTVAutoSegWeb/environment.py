"""What the web app needs from its surroundings: the Slicer module's logic package and a GL
context without a screen."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from GTVAutoSegLib.errors import GTVError

# The Slicer module folder of a source checkout, beside the library (GTVAutoSegSlicerLib lives there).
MODULE_DIR = Path(__file__).resolve().parent.parent / "GTVAutoSeg"


def ensure_module_logic() -> None:
    """Make ``GTVAutoSegSlicerLib`` importable (it is not a pip package: it ships inside the Slicer module)."""
    if importlib.util.find_spec("GTVAutoSegSlicerLib") is not None:
        return
    if not (MODULE_DIR / "GTVAutoSegSlicerLib" / "__init__.py").is_file():
        raise GTVError(f"the web app needs the Slicer module's logic in {MODULE_DIR}; run it from a source checkout")
    sys.path.insert(0, str(MODULE_DIR))


def use_offscreen_gl() -> None:
    """Render with OSMesa when there is no X display.

    VTK's wheel otherwise tries X first and prints a warning on every start before falling back.
    A user who set ``VTK_DEFAULT_OPENGL_WINDOW`` (say, to EGL on a GPU server) keeps their choice.
    """
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSOpenGLRenderWindow")
