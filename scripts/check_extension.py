"""Apply the 3D Slicer Extensions Index checklist to this extension, offline.

    python scripts/check_extension.py [ROOT]      # exit 0 when every check passes

What the index's own review and scripts check, as far as a checkout can show it:

- licence: a licence file in the repository root (a name the index looks for), naming the licence
  that pyproject.toml and README.md name;
- entry: ExtensionsIndex/<name>.json follows the catalog-entry schema (required keys, no unknown
  keys, types), a git/https ``scm_url`` whose repository name holds "Slicer", a branch as revision;
- cmake: ``project()`` is the extension's name, and the metadata the entry repeats agrees with it;
- urls: icon, screenshots and homepage point into that repository at that branch, and the files
  they name exist here (the icon a 128 x 128 PNG, screenshots PNG or JPEG under 300 kB);
- description: one or two sentences, at most 400 characters;
- contributors: each as "Name (Affiliation)";
- category: one the index accepts;
- dependencies: the entry's and CMake's lists agree, each is an extension whose module the code uses,
  and the code uses no extension's module it does not declare.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_URL = re.compile(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.[0-9]+\.json#?")
LICENCE_FILES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# The categories the Extensions Index accepts for an extension (its check_description_files.py).
CATEGORIES = {
    "Active Learning", "Analysis", "Cardiac", "Converters", "DICOM", "Developer Tools", "Diffusion", "Examples",
    "Exporter", "Filtering", "IGT", "Informatics", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Planning",
    "Printing", "Quantification", "Radiotherapy", "Registration", "Remote", "Rendering", "Segmentation",
    "Sequences", "Shape Analysis", "Simulation", "Spectral Imaging", "Surface Models", "Tomographic Reconstruction",
    "Tracking", "Tractography", "Training", "Ultrasound", "Utilities", "Virtual Reality", "Web System Tools",
    "Wizards",
}
# Extensions this one may depend on -> the Python module of theirs that our code imports.
DEPENDENCY_MODULES = {"PyTorch": "PyTorchUtils"}
MAX_DESCRIPTION = 400
MAX_SCREENSHOT_BYTES = 300_000
RAW_URL = re.compile(r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)")


def _cmake(root: Path) -> dict[str, str]:
    text = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_[A-Z]+)\s+"([^"]*)"\)', text))
    project = re.search(r"project\(\s*([^\s)]+)", text)
    values["project"] = project.group(1) if project else ""
    return values


def _entry(root: Path) -> tuple[Path | None, dict]:
    entries = sorted((root / "ExtensionsIndex").glob("*.json"))
    if len(entries) != 1:
        return None, {}
    try:
        return entries[0], json.loads(entries[0].read_text(encoding="utf-8"))
    except ValueError:
        return entries[0], {}


def _repository(scmUrl: str) -> tuple[str, str] | None:
    match = re.fullmatch(r"(?:https|git)://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", scmUrl)
    return (match.group(1), match.group(2)) if match else None


def check_licence(root: Path) -> list[str]:
    found = [name for name in LICENCE_FILES if (root / name).is_file()]
    if not found:
        return [f"no licence file in the repository root (one of {', '.join(LICENCE_FILES)})"]
    text = (root / found[0]).read_text(encoding="utf-8", errors="replace")
    problems = []
    if "Apache License" not in text or "Version 2.0" not in text:
        return [f"{found[0]} is not the Apache License 2.0 text that pyproject.toml names"]
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    if project.get("license") != "Apache-2.0" or found[0] not in project.get("license-files", []):
        problems.append(f"pyproject.toml does not name Apache-2.0 and {found[0]} (license, license-files)")
    if "Apache" not in (root / "README.md").read_text(encoding="utf-8"):
        problems.append("README.md does not name the licence")
    return problems


def check_entry(root: Path) -> list[str]:
    path, entry = _entry(root)
    if path is None:
        return ["ExtensionsIndex/ must hold exactly one <extension name>.json"]
    if not entry:
        return [f"{path.name} is not a JSON object"]
    problems = [f"{path.name}: required key '{k}' is missing" for k in sorted(SCHEMA_REQUIRED - set(entry))]
    problems += [f"{path.name}: key '{k}' is not in the catalog-entry schema" for k in sorted(set(entry) - SCHEMA_KEYS)]
    if "$schema" in entry and not SCHEMA_URL.fullmatch(str(entry["$schema"])):
        problems.append(f"{path.name}: $schema is not a Slicer catalog-entry schema URL")
    for key, kind in (("category", str), ("scm_url", str), ("scm_revision", str), ("build_subdirectory", str),
                      ("build_dependencies", list), ("tier", int)):
        if key in entry and not isinstance(entry[key], kind):
            problems.append(f"{path.name}: '{key}' must be a {kind.__name__}")
    if isinstance(entry.get("tier"), int) and not 1 <= entry["tier"] <= 5:
        problems.append(f"{path.name}: tier must be 1 to 5")
    repository = _repository(str(entry.get("scm_url", "")))
    if repository is None:
        problems.append(f"{path.name}: scm_url must be https:// or git:// github.com/OWNER/REPOSITORY")
    elif "slicer" not in repository[1].lower():
        problems.append(f"{path.name}: the repository name '{repository[1]}' should be 'Slicer{repository[1]}' "
                        "(the index asks for Slicer+ExtensionName)")
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", str(entry.get("scm_revision", ""))) or re.fullmatch(
            r"[0-9a-f]{40}", str(entry.get("scm_revision", ""))):
        problems.append(f"{path.name}: scm_revision should be a branch name (main), not missing or a commit hash")
    return problems


def check_cmake(root: Path) -> list[str]:
    cmake, (path, entry) = _cmake(root), _entry(root)
    problems = []
    if path is not None and cmake["project"] != path.stem:
        problems.append(f"CMakeLists.txt project({cmake['project']}) is not the entry's name {path.stem}")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        if not cmake.get(key):
            problems.append(f"CMakeLists.txt sets no {key}")
    if entry and cmake.get("EXTENSION_CATEGORY") != entry.get("category"):
        problems.append(f"category differs: CMake '{cmake.get('EXTENSION_CATEGORY')}', entry '{entry.get('category')}'")
    return problems


def _png_size(path: Path) -> tuple[int, int] | None:
    data = path.read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def check_urls(root: Path) -> list[str]:
    cmake, (_, entry) = _cmake(root), _entry(root)
    repository = _repository(str(entry.get("scm_url", "")))
    if repository is None:
        return ["no repository to check the URLs against (see the entry check)"]
    owner, name = repository
    branch = entry.get("scm_revision", "main")
    problems = []
    homepage = cmake.get("EXTENSION_HOMEPAGE", "")
    if not re.fullmatch(rf"https://github\.com/{re.escape(owner)}/{re.escape(name)}(#readme|/blob/{re.escape(branch)}/README\.md)?",
                        homepage):
        problems.append(f"homepage {homepage} is not the repository's README")
    if not (root / "README.md").is_file():
        problems.append("README.md (the homepage) is missing")

    def local(url: str, what: str) -> Path | None:
        match = RAW_URL.fullmatch(url)
        if not match or match.group(1, 2, 3) != (owner, name, branch):
            problems.append(f"{what} {url} is not a raw file of {owner}/{name} at {branch}")
            return None
        path = root / match.group(4)
        if not path.is_file():
            problems.append(f"{what} {url} names {match.group(4)}, which is not in the repository")
            return None
        return path

    icon = local(cmake.get("EXTENSION_ICONURL", ""), "icon URL")
    if icon is not None and _png_size(icon) != (128, 128):
        problems.append(f"the icon {icon.name} is not a 128 x 128 PNG")
    shots = cmake.get("EXTENSION_SCREENSHOTURLS", "").split()
    if not shots:
        problems.append("no screenshot URL")
    for url in shots:
        shot = local(url, "screenshot URL")
        if shot is None:
            continue
        if _png_size(shot) is None and shot.read_bytes()[:3] != b"\xff\xd8\xff":
            problems.append(f"screenshot {shot.name} is neither PNG nor JPEG")
        if shot.stat().st_size > MAX_SCREENSHOT_BYTES:
            problems.append(f"screenshot {shot.name} is {shot.stat().st_size} bytes (keep it under {MAX_SCREENSHOT_BYTES})")
    return problems


def check_description(root: Path) -> list[str]:
    text = _cmake(root).get("EXTENSION_DESCRIPTION", "").strip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    problems = []
    if not 1 <= len(sentences) <= 2:
        problems.append(f"the description has {len(sentences)} sentences; the index asks for 1 or 2")
    if len(text) > MAX_DESCRIPTION:
        problems.append(f"the description has {len(text)} characters (at most {MAX_DESCRIPTION})")
    return problems


def check_contributors(root: Path) -> list[str]:
    people = [p.strip() for p in re.split(r",(?![^(]*\))", _cmake(root).get("EXTENSION_CONTRIBUTORS", "")) if p.strip()]
    if not people:
        return ["no contributors"]
    return [f"contributor '{p}' is not written as 'Name (Affiliation)'" for p in people
            if not re.fullmatch(r"[^()]+ \([^()]+\)", p)]


def check_category(root: Path) -> list[str]:
    category = _cmake(root).get("EXTENSION_CATEGORY", "")
    return [] if category in CATEGORIES else [f"category '{category}' is not one the index accepts"]


def check_dependencies(root: Path) -> list[str]:
    cmake, (_, entry) = _cmake(root), _entry(root)
    declared = cmake.get("EXTENSION_DEPENDS", "").replace(";", " ").split()
    declared = [] if declared == ["NA"] else declared
    problems = []
    if sorted(declared) != sorted(entry.get("build_dependencies", [])):
        problems.append(f"dependencies differ: CMake {declared}, entry {entry.get('build_dependencies', [])}")
    code = "\n".join(p.read_text(encoding="utf-8") for p in (root / "GTVAutoSeg").rglob("*.py"))
    for extension in declared:
        module = DEPENDENCY_MODULES.get(extension)
        if module is None:
            problems.append(f"dependency '{extension}' is not an extension this script knows")
        elif not re.search(rf"\bimport {module}\b", code):
            problems.append(f"dependency '{extension}' is declared but its module {module} is never imported")
    for extension, module in DEPENDENCY_MODULES.items():
        if extension not in declared and re.search(rf"\bimport {module}\b", code):
            problems.append(f"the code imports {module} but does not declare the '{extension}' extension")
    return problems


CHECKS = {"licence": check_licence, "entry": check_entry, "cmake": check_cmake, "urls": check_urls,
          "description": check_description, "contributors": check_contributors, "category": check_category,
          "dependencies": check_dependencies}


def run(root: Path) -> dict[str, list[str]]:
    """Every check's problems (an empty list: passed)."""
    return {name: check(root) for name, check in CHECKS.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    results = run(root)
    for name, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"       {problem}")
    return 0 if not any(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
