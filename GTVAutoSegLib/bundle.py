"""A trained model as one file: its networks (slice classifier, segmenter, optionally a 3D
locator), their configs, the preprocessing spec, how their outputs combine, the operating
threshold, a version and training provenance (nnU-Net's "plans" idea).

On disk it is a ``torch.save`` of plain containers (strings and tensors only) so that it loads
with ``torch.load(weights_only=True)``: a file holding pickled code is refused, not executed.
This module imports torch only where weights are read, built or written: a bundle's description
(:func:`bundle_from_meta`) needs none (the ONNX Runtime engine, ``onnxnets.py``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cascade import CombineSpec
from .catalog import MODELS_JSON, ModelEntry, list_models, newest  # noqa: F401  (re-exported)
from .coarse import CoarseSpec
from .errors import GTVError
from .inputcheck import check_input_path
from .netconfig import NetConfig
from .preprocessing import PreprocessSpec
from .segfile import check_anatomic_region

FORMAT = "gtvautoseg-bundle"
# 2 added the locator, an optional classifier, 2.5D context and the combine spec; 1 is still read
# (a format-1 bundle is a classifier + 2D/3D segmenter cascade with the defaults of all of them).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class PostprocessSpec:
    """What happens to the stitched 3D mask.

    Args:
        keep_largest: keep only the N largest 3D connected components (0 keeps all; PTV70 often
            has nodal volumes apart from the primary, so the default keeps all).
        min_component_cc: drop components smaller than this volume in cc (0 keeps all).
    """

    keep_largest: int = 0
    min_component_cc: float = 0.0


@dataclass
class ModelBundle:
    """Everything inference needs, nothing hard-coded at the call site.

    ``classifier`` may be None when the locator picks the slices (``combine.gate``); ``locator``
    is None in a plain HCF cascade. ``*_context``: slices per 2D input (2.5D).
    """

    name: str
    version: str
    classifier: NetConfig | None
    segmenter: NetConfig
    preprocess: PreprocessSpec
    threshold: float = 0.5
    target: str = "GTV"
    anatomic_region: str = ""
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    provenance: dict[str, Any] = field(default_factory=dict)
    classifier_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    segmenter_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    locator: NetConfig | None = None
    locator_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    coarse: CoarseSpec = field(default_factory=CoarseSpec)
    combine: CombineSpec = field(default_factory=CombineSpec)
    classifier_context: int = 1
    segmenter_context: int = 1

    def __post_init__(self) -> None:
        # Checked when a bundle is built or loaded, not after a whole inference when the result is written.
        if self.anatomic_region:
            check_anatomic_region(self.anatomic_region)
        self.combine.validate(self.classifier is not None, self.locator is not None)
        self.coarse.validate()
        for role, k in (("classifier", self.classifier_context), ("segmenter", self.segmenter_context)):
            cfg = getattr(self, role)
            if cfg is not None and cfg.in_channels != k:
                raise GTVError(f"model '{self.name}': the {role} takes {cfg.in_channels} input channels but its "
                               f"context is {k} slices")

    def meta(self) -> dict[str, Any]:
        """The JSON-safe description (everything but the weights)."""
        return {
            "name": self.name,
            "version": self.version,
            "classifier": self.classifier.to_dict() if self.classifier is not None else None,
            "segmenter": self.segmenter.to_dict(),
            "locator": self.locator.to_dict() if self.locator is not None else None,
            "preprocess": self.preprocess.to_dict(),
            "coarse": self.coarse.to_dict(),
            "combine": self.combine.to_dict(),
            "context": {"classifier": self.classifier_context, "segmenter": self.segmenter_context},
            "threshold": float(self.threshold),
            "target": self.target,
            "anatomic_region": self.anatomic_region,
            "postprocess": asdict(self.postprocess),
            "provenance": self.provenance,
        }

    def _build(self, cfg: NetConfig | None, state: dict, role: str):
        if cfg is None:
            return None
        from .models import build_network

        net = build_network(cfg)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise GTVError(f"model '{self.name}': {role} weights do not match its architecture: {first}") from None
        return net.float().eval()

    def build_networks(self) -> tuple:
        """Classifier (None if the model has none) and segmenter with their weights loaded (strict),
        in eval mode, on the CPU, float32."""
        return self.build_classifier(), self.build_segmenter()

    def build_classifier(self):
        """The slice classifier with its weights, or None (a model without one)."""
        return self._build(self.classifier, self.classifier_state, "classifier")

    def build_segmenter(self):
        """The segmenter with its weights."""
        return self._build(self.segmenter, self.segmenter_state, "segmenter")

    def build_locator(self):
        """The 3D locator with its weights, or None."""
        return self._build(self.locator, self.locator_state, "locator")

    @classmethod
    def from_networks(cls, classifier_net, segmenter_net, /, locator_net=None, **kwargs: Any) -> "ModelBundle":
        """A bundle from (trained) modules; ``kwargs`` are the other fields (name, version,
        classifier, segmenter and locator configs, preprocess, ...)."""
        return cls(classifier_state=_cpu_state(classifier_net) if classifier_net is not None else {},
                   segmenter_state=_cpu_state(segmenter_net),
                   locator_state=_cpu_state(locator_net) if locator_net is not None else {}, **kwargs)


def _cpu_state(net) -> dict[str, "torch.Tensor"]:
    # DDP / torch.compile wrap the module; the bundle holds the bare network's keys.
    net = getattr(net, "module", net)
    net = getattr(net, "_orig_mod", net)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def save_bundle(bundle: ModelBundle, path: str | Path, half: bool = False) -> str:
    """Write the bundle atomically; ``half`` stores floating weights as fp16 (half the size).

    Returns:
        The file's SHA-256 (hex), for ``Resources/Models.json``.
    """
    import torch

    from .outputs import atomic_output

    def cast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in state.items()}

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta_json": json.dumps(bundle.meta(), sort_keys=True),
        "classifier": cast(bundle.classifier_state),
        "segmenter": cast(bundle.segmenter_state),
        "locator": cast(bundle.locator_state),
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return sha256_file(path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bundle_file(path: Path, expected_sha256: str | None = None, want_sha256: bool = False) -> str | None:
    """Refuse a model path that is missing, not a plain file, or (with ``expected_sha256``, a
    listed model's) not the file Models.json names. Returns the file's SHA-256 when it was computed
    (``expected_sha256`` given, or ``want_sha256``), else None."""
    if not path.exists():
        raise GTVError(f"model file not found: {path}")
    check_input_path(path, "model file")  # a FIFO would block, a folder is no bundle
    if not path.is_file():
        raise GTVError(f"model {path} is a folder, not a bundle file")
    if expected_sha256 is None and not want_sha256:
        return None
    sha = sha256_file(path)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise GTVError(f"model file {path.name} does not match its SHA-256 in Models.json (tampered or "
                       "incomplete download); refusing to load it")
    return sha


def load_bundle(path: str | Path, expected_sha256: str | None = None) -> ModelBundle:
    """Read a bundle file, refusing anything that is not exactly one.

    Raises:
        GTVError: missing file, hash mismatch, truncated or corrupt file, pickled code, or a
            file that is not a GTVAutoSeg bundle.
    """
    path = Path(path)
    check_bundle_file(path, expected_sha256)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is no bundle
        raise GTVError(f"{path.name} is not a GTVAutoSeg model bundle (not a torch archive; truncated download?)")
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / code-bearing files
        text = str(exc)
        if "Unsupported global" in text or "Unsupported operand" in text:
            reason = "it contains pickled code or objects other than tensors, which are never run"
        else:
            reason = "truncated or corrupt archive"
        raise GTVError(f"cannot load model file {path.name}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GTVError(f"{path.name} is not a GTVAutoSeg model bundle")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise GTVError(f"{path.name} has bundle format {payload.get('format_version')}, this version reads "
                       f"{', '.join(map(str, READABLE_VERSIONS))}")
    try:
        meta = json.loads(payload["meta_json"])
    except (TypeError, ValueError) as exc:
        raise GTVError(f"{path.name}: bundle description is incomplete or invalid ({exc})") from None
    return bundle_from_meta(meta, payload, path.name)


def bundle_from_meta(meta: dict, states: dict | None = None, source: str = "bundle") -> ModelBundle:
    """A :class:`ModelBundle` from its description (``ModelBundle.meta()``) and, when given, the
    networks' weights (``states``: ``classifier``, ``segmenter``, ``locator``); without them the
    bundle describes the model and builds no network (the ONNX Runtime engine holds its own).

    Raises:
        GTVError: the description is incomplete or invalid (``source`` names the file).
    """
    states = states or {}
    try:
        context = meta.get("context", {})
        return ModelBundle(
            name=meta["name"],
            version=meta["version"],
            classifier=NetConfig.from_dict(meta["classifier"]) if meta["classifier"] is not None else None,
            segmenter=NetConfig.from_dict(meta["segmenter"]),
            locator=NetConfig.from_dict(meta["locator"]) if meta.get("locator") is not None else None,
            preprocess=PreprocessSpec.from_dict(meta["preprocess"]),
            coarse=CoarseSpec.from_dict(meta["coarse"]) if "coarse" in meta else CoarseSpec(),
            combine=CombineSpec.from_dict(meta["combine"]) if "combine" in meta else CombineSpec(),
            classifier_context=int(context.get("classifier", 1)),
            segmenter_context=int(context.get("segmenter", 1)),
            threshold=float(meta["threshold"]),
            target=meta.get("target", "GTV"),
            anatomic_region=meta.get("anatomic_region", ""),
            postprocess=PostprocessSpec(**meta.get("postprocess", {})),
            provenance=meta.get("provenance", {}),
            classifier_state=states.get("classifier", {}),
            segmenter_state=states.get("segmenter", {}),
            locator_state=states.get("locator", {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GTVError(f"{source}: bundle description is incomplete or invalid ({exc})") from None


# --- the list of shipped models -------------------------------------------------------------

def resolve_model(name_or_path: str | None, models_json: str | Path = MODELS_JSON) -> tuple[Path, str | None, ModelEntry | None]:
    """Turn ``--model`` into a file path and the hash it must have.

    ``None`` picks the default entry of Models.json; ``name@version`` picks that entry and a bare
    listed name its default (else newest) version, with the entry's hash enforced; anything else
    is taken as a path to a bundle file. A path that is one of the
    listed files is held to that entry's hash too.
    """
    models_json = Path(models_json)
    entries = list_models(models_json)
    resources = models_json.parent
    if name_or_path is None:
        defaults = [e for e in entries if e.default] or entries[:1]
        if not defaults:
            raise GTVError(f"no model is installed ({models_json} lists none); pass --model PATH to a bundle")
        e = defaults[0]
        return e.fetch(resources), e.sha256, e
    for e in entries:
        if name_or_path == e.key:
            return e.fetch(resources), e.sha256, e
    same_name = [e for e in entries if e.name == name_or_path]
    if same_name:  # a bare name: its default version, else its newest
        e = newest(same_name)
        return e.fetch(resources), e.sha256, e
    path = Path(name_or_path)
    for e in entries:
        if path.exists() and e.path(resources).exists() and path.resolve() == e.path(resources).resolve():
            return path, e.sha256, e
    if not path.exists():
        known = ", ".join(e.name for e in entries) or "none installed"
        raise GTVError(f"model '{name_or_path}' is neither a listed model ({known}) nor an existing file")
    return path, None, None


def open_model(name_or_path: str | None, models_json: str | Path = MODELS_JSON) -> ModelBundle:
    """``resolve_model`` then ``load_bundle`` with the hash enforced for listed models."""
    path, sha, _ = resolve_model(name_or_path, models_json)
    return load_bundle(path, expected_sha256=sha)
