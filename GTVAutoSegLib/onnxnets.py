"""The ONNX Runtime engine: a model's networks as ONNX Runtime sessions, so that a call needs no torch.

Importing torch takes about a second on a laptop-class CPU, more than segmenting a CT once the
networks are loaded. A model bundle is a torch file, so its networks are exported to ONNX once (the
first time the model runs with this engine, with torch and the ``onnx`` package) into the user's
cache, ``$GTVAUTOSEG_CACHE`` or ``~/.cache/gtvautoseg`` (``$XDG_CACHE_HOME`` respected), in a folder
named after the bundle file's SHA-256 with a manifest that holds the bundle's description. Every
later call reads the manifest and the ONNX files, checks them against their recorded SHA-256s and
builds the sessions: no torch, no MONAI.

An export is used only if ONNX Runtime reproduces torch's class-1 probabilities on a test input
within ``EXPORT_TOLERANCE``; a network that cannot be exported, or not faithfully, leaves a note in
the cache and the model runs on torch. The folder appears complete or not at all (written under a
temporary name and renamed), so two processes exporting at once, or one killed halfway, leave no
half-written cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import ModelBundle, bundle_from_meta, check_bundle_file, sha256_file
from .device import check_device_name
from .errors import GTVError

MANIFEST = "manifest.json"
UNSUPPORTED = "unsupported.json"
FORMAT = "gtvautoseg-onnx"
FORMAT_VERSION = 1
OPSET = 17
ROLES = ("classifier", "segmenter", "locator")
# Largest difference of class-1 probabilities between ONNX Runtime and torch on the export's test input.
EXPORT_TOLERANCE = 1e-4


def cache_root() -> Path:
    """Where exports live: ``$GTVAUTOSEG_CACHE``, else ``$XDG_CACHE_HOME/gtvautoseg``, else
    ``~/.cache/gtvautoseg``; the ONNX files under ``onnx/<bundle SHA-256>/``."""
    if os.environ.get("GTVAUTOSEG_CACHE"):
        return Path(os.environ["GTVAUTOSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gtvautoseg"


def cache_folder(bundle_sha256: str) -> Path:
    return cache_root() / "onnx" / bundle_sha256


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import hook that refuses the name
        return False


def runtime_available() -> bool:
    """onnxruntime is installed (found, not imported)."""
    return _installed("onnxruntime")


def exporter_available() -> bool:
    """torch and the onnx package are installed (needed only to export)."""
    return _installed("onnx") and _installed("torch")


def nvidia_driver_visible() -> bool:
    """A CUDA GPU may be present (an NVIDIA driver is loaded): ``--device auto`` then goes to torch,
    which decides. Cheap, without torch."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def threads() -> int:
    """Threads per session: ``OMP_NUM_THREADS`` when set (Ray sets it per worker), else the CPUs
    this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def class1_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1, class 1 kept: ``(B, K, ...) -> (B, ...)`` float32."""
    logits = np.asarray(logits, dtype=np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32, copy=False)


class OrtNet:
    """One ONNX Runtime session as a net of the cascade (``probabilities(x)``)."""

    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0].name  # a multi-task segmenter's first output: the segmentation

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return class1_probabilities(logits)


@dataclass
class OnnxModel:
    """A model's networks as ONNX Runtime sessions, and its description (``bundle`` holds no weights)."""

    bundle: ModelBundle
    classifier: OrtNet | None
    segmenter: OrtNet
    locator: OrtNet | None
    segmenter_depth: int | None
    folder: Path
    engine: str = "onnx"

    @staticmethod
    def check_run_options(device: str, precision: str) -> None:
        """ONNX Runtime runs here on the CPU in fp32; anything else is torch's."""
        if check_device_name(device) not in ("auto", "cpu"):
            raise GTVError(f"the ONNX Runtime engine runs on the CPU; for --device {device} use --engine torch")
        if precision == "bf16":
            raise GTVError("the ONNX Runtime engine runs in fp32; for --precision bf16 use --engine torch")


# ------------------------------------------------------------------------------------- reading


def make_session(path: Path):
    """An ONNX Runtime CPU session for one network file, threads as :func:`threads` says.

    Raises:
        EngineUnavailable: onnxruntime does not load, or cannot run this file (an older release
            than the one that exported it, say); ``auto`` then runs torch.
    """
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken install raises ImportError, OSError (a missing library), ...
        raise EngineUnavailable(f"onnxruntime cannot be loaded ({_first_line(exc)})") from None
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings are not the user's business
        # Idle threads sleep instead of spinning: on a shared CPU a spinning thread waits on a sibling
        # the OS has descheduled (the reason the CLI sets OMP_WAIT_POLICY=PASSIVE for torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        version = getattr(ort, "__version__", "?")
        reason = _first_line(RuntimeError(str(exc).replace(str(path), path.name)))
        raise EngineUnavailable(f"ONNX Runtime {version} cannot run {path.name}: {reason}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" [Caused by")[0][:200]


def read_manifest(folder: Path, bundle_sha256: str) -> dict | None:
    """The manifest of a complete, intact export of that bundle, or None (absent, another format,
    or a file missing or changed: it is exported again)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("format_version") != FORMAT_VERSION or manifest.get("bundle_sha256") != bundle_sha256:
        return None
    nets = manifest.get("nets")
    if not isinstance(nets, dict) or "segmenter" not in nets or manifest.get("meta_sha256") != _meta_sha256(manifest.get("meta")):
        return None  # the description (threshold, preprocessing...) changed since the export: made again
    for entry in nets.values():
        try:
            path = folder / entry["file"]
            if path.name != entry["file"] or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return manifest


def open_export(folder: Path, manifest: dict, use_classifier: bool = True) -> OnnxModel:
    """Sessions for an export :func:`read_manifest` accepted; the classifier's only if it will run."""
    bundle = bundle_from_meta(manifest["meta"], source=f"ONNX export {folder}")
    nets = manifest["nets"]

    def net(role: str) -> OrtNet | None:
        if role not in nets or (role == "classifier" and not use_classifier):
            return None
        return OrtNet(make_session(folder / nets[role]["file"]))

    return OnnxModel(bundle, net("classifier"), net("segmenter"), net("locator"), manifest.get("segmenter_depth"),
                     folder)


def unsupported_reason(folder: Path) -> str | None:
    """Why an earlier export of this bundle was given up (then the model runs on torch), or None."""
    try:
        return json.loads((folder.parent / f"{folder.name}.{UNSUPPORTED}").read_text())["reason"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_onnx(path: str | Path, expected_sha256: str | None = None, export: bool = True,
              use_classifier: bool = True, note=None) -> OnnxModel:
    """The bundle file at ``path`` as an :class:`OnnxModel`, exported first if it is not in the cache.

    Args:
        expected_sha256: the hash a listed model must have (Models.json).
        export: export when not cached (needs torch and onnx); False raises ``NotExported``.
        use_classifier: False leaves the classifier's session unbuilt (it would not run).
        note: ``note(message)`` for the one line a user sees while the model is exported.

    Raises:
        GTVError: missing, tampered or damaged bundle; an export that failed or is not faithful.
    """
    path = Path(path)
    sha = check_bundle_file(path, expected_sha256, want_sha256=True)
    folder = cache_folder(sha)
    manifest = read_manifest(folder, sha)
    if manifest is None:
        if not export:
            raise NotExported(f"model {path.name} has no ONNX export in {folder.parent} yet")
        reason = unsupported_reason(folder)
        if reason is not None:
            raise ExportFailed(f"model {path.name} cannot run on ONNX Runtime: {reason}")
        if note is not None:
            note(f"exporting model {path.name} for ONNX Runtime into {folder} (once; later runs start faster)")
        manifest = export_bundle(path, sha, folder, expected_sha256)
    return open_export(folder, manifest, use_classifier)


class NotExported(GTVError):
    """The bundle has no ONNX export in the cache (and none was asked for)."""


class ExportFailed(GTVError):
    """The bundle could not be exported (now or before), or not faithfully, or the cache cannot be written."""


class EngineUnavailable(GTVError):
    """onnxruntime is installed but cannot load, or cannot run an exported file."""


# ------------------------------------------------------------------------------------- exporting


def _example_shape(bundle: ModelBundle, role: str, depth: int | None) -> tuple[int, ...]:
    """The test input's shape for ``role``: the model-space side of the bundle's preprocessing."""
    side = bundle.preprocess.size if bundle.preprocess.mode == "resize" else 4 * bundle.preprocess.divisor
    if role == "locator":
        return (1, 1, *bundle.coarse.shape)
    if role == "segmenter" and depth is not None:
        return (1, 1, depth, side, side)
    channels = bundle.classifier_context if role == "classifier" else bundle.segmenter_context
    return (2, channels, side, side)


def export_bundle(path: Path, sha: str, folder: Path, expected_sha256: str | None = None) -> dict:
    """Export the bundle's networks into ``folder`` (complete or not at all) and return the manifest.

    Each network is exported (TorchScript exporter, opset ``OPSET``; the batch dynamic, and the
    in-plane size too for the 2D and windowed 3D networks of a "spacing"-mode model, whose
    model-space side varies per CT), then run by ONNX Runtime and by torch on the same
    seeded input; the export is kept only if their class-1 probabilities agree within
    ``EXPORT_TOLERANCE``. A failure is written down beside the folder (``auto`` then uses torch
    without trying again) and raised.
    """
    if not exporter_available():
        raise ExportFailed("exporting a model for ONNX Runtime needs torch and the onnx package (pip install onnx); "
                           "or use --engine torch")
    from .bundle import load_bundle

    bundle = load_bundle(path, expected_sha256=expected_sha256 or sha)  # a damaged bundle: torch's error
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ExportFailed(f"cannot write the ONNX cache {folder.parent}: {exc.strerror or exc}") from None
    try:
        try:
            manifest = _export_into(bundle, sha, path.name, tmp)
        except ExportFailed as exc:
            _write_unsupported(folder, str(exc))
            raise
        try:
            os.rename(tmp, folder)
        except OSError:
            if read_manifest(folder, sha) is None:  # not another process's complete export: ours replaces it
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
        return read_manifest(folder, sha) or manifest
    except OSError as exc:
        raise ExportFailed(f"cannot write the ONNX cache {folder.parent}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_unsupported(folder: Path, reason: str) -> None:
    """Remember why (``auto`` then goes to torch at once); delete the file to try again."""
    from .outputs import atomic_output

    with atomic_output(folder.parent / f"{folder.name}.{UNSUPPORTED}") as t:
        Path(t).write_text(json.dumps({"reason": reason}))


def _export_into(bundle: ModelBundle, sha: str, source: str, out: Path) -> dict:
    import warnings

    import onnx
    import torch

    from .models import network_kind, resolve_config
    from .torchnets import TorchNet

    seg_cfg = resolve_config(bundle.segmenter)
    depth = seg_cfg.params["patch_depth"] if network_kind(seg_cfg.name) == "segmenter3d" else None
    builders = {"classifier": bundle.build_classifier, "segmenter": bundle.build_segmenter,
                "locator": bundle.build_locator}
    nets = {}
    for role in ROLES:
        module = builders[role]()
        if module is None:
            continue
        shape = _example_shape(bundle, role, depth)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        spatial = len(shape) - 2
        dynamic = {0: "batch"}
        # In-plane size: fixed in "resize" mode (size x size) and on the locator's grid; it varies
        # per CT only in "spacing" mode (some networks, SANet's pyramid pooling, cannot export so).
        if role != "locator" and bundle.preprocess.mode != "resize":
            dynamic.update({len(shape) - 2: "height", len(shape) - 1: "width"})
        out_dynamic = {0: "batch"} if role == "classifier" else dict(dynamic)
        file = out / f"{role}.onnx"
        try:
            # the exporter's notes on its own deprecation, and the graph it prints when it fails
            with warnings.catch_warnings(), torch.no_grad(), quiet_output():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), (torch.from_numpy(x),), str(file), dynamo=False, opset_version=OPSET,
                                  input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": dynamic, "logits": out_dynamic})
            onnx.checker.check_model(str(file))
        except OSError:
            raise  # the cache's disk, not the model: nothing is remembered against it
        except Exception as exc:  # the exporter raises many types for an operator it cannot write
            raise ExportFailed(f"its {role} ({_cfg_name(bundle, role)}) cannot be exported to ONNX: "
                               f"{_first_line(exc)}") from None
        ort_p = OrtNet(make_session(file)).probabilities(x)
        torch_p = TorchNet(module, torch.device("cpu"), "fp32", spatial).probabilities(x)
        diff = float(np.abs(ort_p - torch_p).max())
        if not diff <= EXPORT_TOLERANCE:
            raise ExportFailed(f"its {role} under ONNX Runtime differs from torch by {diff:.2g} in probability "
                           f"(more than {EXPORT_TOLERANCE:g})")
        nets[role] = {"file": file.name, "bytes": file.stat().st_size, "sha256": sha256_file(file),
                      "test_input": list(shape), "max_abs_diff": diff}
    meta = bundle.meta()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "bundle_sha256": sha, "bundle_file": source,
                "meta": meta, "meta_sha256": _meta_sha256(meta), "segmenter_depth": depth, "nets": nets, "opset": OPSET,
                "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                                  "python": sys.version.split()[0]}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


@contextlib.contextmanager
def quiet_output():
    """What the exporter prints (its graph when it fails, C++ included) kept off the terminal:
    fd 2 as ``native.quiet_stderr`` does (logged at debug level), fd 1 to /dev/null."""
    from .native import quiet_stderr

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink, quiet_stderr("the ONNX exporter"):
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _meta_sha256(meta) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _cfg_name(bundle: ModelBundle, role: str) -> str:
    cfg = getattr(bundle, role)
    return cfg.name if cfg is not None else "none"
