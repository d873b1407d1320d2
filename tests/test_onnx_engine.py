"""The ONNX Runtime engine (``onnxnets.py``, ``--engine``): the same masks as torch, an export made
once and checked every time, failures remembered and answered by torch, and no torch import on a
cold call once the model is exported."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib import onnxnets
from GTVAutoSegLib.bundle import ModelBundle, load_bundle, resolve_model, save_bundle
from GTVAutoSegLib.cli import main
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec

from test_cascade import _fake_bundle, _phantom_with_marker

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GTVAUTOSEG_CACHE", str(folder))
    return folder


def _saved(tmp_path, bundle=None):
    path = tmp_path / "fake.pt"
    save_bundle(bundle or _fake_bundle(), path)
    return path


def test_onnx_engine_gives_torchs_result_on_the_cascade(tmp_path, cache):
    ct, marker = _phantom_with_marker()
    path = _saved(tmp_path)
    model = onnxnets.open_onnx(path)
    assert (model.folder.parent.parent, model.folder.name) == (cache, onnxnets.sha256_file(path))
    torch_result = Segmenter(load_bundle(path), "cpu")(ct)
    onnx_result = Segmenter(model.bundle, "cpu", nets=model)(ct)
    assert np.array_equal(onnx_result.mask.array, torch_result.mask.array) and onnx_result.mask.array.sum() > 0
    assert np.array_equal(onnx_result.selected, torch_result.selected)
    assert np.allclose(onnx_result.slice_probs, torch_result.slice_probs, atol=1e-5)
    assert (torch_result.engine, onnx_result.engine) == ("torch", "onnx")
    assert model.bundle.meta() == load_bundle(path).meta()  # the description travels in the manifest


def test_a_locator_model_with_25d_context_runs_the_same_on_both_engines(tmp_path, cache):
    from GTVAutoSegLib.cascade import CombineSpec

    ct, marker = _phantom_with_marker()
    seg_cfg = NetConfig("test_bright_segmenter", in_channels=3, params={"level": 0.8})
    loc_cfg = NetConfig("test_bright_locator", params={"level": 0.8})
    bundle = ModelBundle.from_networks(
        None, build_network(seg_cfg), locator_net=build_network(loc_cfg), name="loc", version="0.0.1",
        classifier=None, segmenter=seg_cfg, locator=loc_cfg, preprocess=PreprocessSpec(window=(-1000.0, 3000.0), size=64),
        combine=CombineSpec(gate="locator", locator_weight=0.5), segmenter_context=3, threshold=0.5)
    path = _saved(tmp_path, bundle)
    model = onnxnets.open_onnx(path)
    assert set(json.loads((model.folder / "manifest.json").read_text())["nets"]) == {"segmenter", "locator"}
    a = Segmenter(load_bundle(path), "cpu")(ct)
    b = Segmenter(model.bundle, "cpu", nets=model)(ct)
    assert np.array_equal(a.mask.array, b.mask.array) and a.mask.array.sum() > 0


def test_the_export_is_made_once_and_checked_on_every_use(tmp_path, cache, monkeypatch):
    path = _saved(tmp_path)
    first = onnxnets.open_onnx(path)
    assert not [p for p in first.folder.parent.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left
    calls = []
    real_export = onnxnets.export_bundle
    monkeypatch.setattr(onnxnets, "export_bundle", lambda *a, **k: calls.append(a) or real_export(*a, **k))
    onnxnets.open_onnx(path)
    assert calls == []  # reused
    seg = first.folder / "segmenter.onnx"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one changed byte in the weights
    seg.write_bytes(bytes(data))
    onnxnets.open_onnx(path)
    assert len(calls) == 1  # a changed file is never run: exported again
    manifest = json.loads((first.folder / "manifest.json").read_text())
    manifest["meta"]["threshold"] = 0.01  # an edited description would change every contour
    (first.folder / "manifest.json").write_text(json.dumps(manifest))
    assert onnxnets.open_onnx(path).bundle.threshold == 0.5
    assert len(calls) == 2  # not trusted: exported again
    seg.write_bytes(b"x")
    with pytest.raises(onnxnets.NotExported):
        onnxnets.open_onnx(path, export=False)


def test_a_tampered_bundle_is_refused_before_any_export(tmp_path, cache):
    path = _saved(tmp_path)
    with pytest.raises(GTVError, match="SHA-256"):
        onnxnets.open_onnx(path, expected_sha256="0" * 64)
    assert not cache.exists()


def test_a_failed_export_is_remembered_and_auto_runs_torch(tmp_path, cache, monkeypatch, capsys):
    path = _saved(tmp_path)

    def cannot(*args, **kwargs):
        raise onnxnets.ExportFailed("its segmenter (x) cannot be exported to ONNX: no such operator")

    monkeypatch.setattr(onnxnets, "_export_into", cannot)
    with pytest.raises(onnxnets.ExportFailed, match="no such operator"):
        onnxnets.open_onnx(path)
    monkeypatch.setattr(onnxnets, "_export_into", lambda *a: pytest.fail("tried again"))
    with pytest.raises(onnxnets.ExportFailed, match="cannot run on ONNX Runtime: its segmenter"):
        onnxnets.open_onnx(path)
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nii.gz"))
    # --engine onnx: one line, exit 2, nothing written
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "o1"), "--model", str(path),
               "--engine", "onnx", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot run on ONNX Runtime" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())


def test_auto_uses_an_existing_export_for_a_bundle_file_and_torch_without_one(tmp_path, cache):
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "pt.nii.gz"))
    path = _saved(tmp_path)

    def engine_of(out):
        args = ["segment", str(tmp_path / "pt.nii.gz"), "-o", str(tmp_path / out), "--model", str(path),
                "--device", "cpu", "--progress", "none"]
        assert main(args) == 0
        return json.loads((tmp_path / out / "pt_report.json").read_text())["engine"]

    assert engine_of("a") == "torch"  # a bundle file is not exported unasked
    assert not cache.exists()
    onnxnets.open_onnx(path)
    assert engine_of("b") == "onnx"
    assert (tmp_path / "a" / "pt.seg.nrrd").read_bytes() == (tmp_path / "b" / "pt.seg.nrrd").read_bytes()


@pytest.mark.parametrize("flags,message", [(["--device", "cuda"], "runs on the CPU"),
                                           (["--precision", "bf16"], "runs in fp32")])
def test_onnx_refuses_what_only_torch_does(tmp_path, cache, capsys, flags, message):
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nii.gz"))
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(_saved(tmp_path)),
               "--engine", "onnx", "--progress", "none", *flags])
    assert rc == 2 and message in capsys.readouterr().err
    with pytest.raises(GTVError, match=message):
        onnxnets.OnnxModel.check_run_options(*(("cuda", "auto") if "cuda" in flags else ("cpu", "bf16")))


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GTVAUTOSEG_CACHE", str(blocker))
    with pytest.raises(onnxnets.ExportFailed, match="cannot write the ONNX cache"):
        onnxnets.open_onnx(_saved(tmp_path))


def test_class1_probabilities_is_torchs_softmax():
    import torch

    logits = np.random.default_rng(0).normal(0, 30, (4, 3, 5, 6)).astype(np.float32)
    ref = torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].numpy()
    assert np.abs(onnxnets.class1_probabilities(logits) - ref).max() < 1e-6


def test_a_cold_segment_with_the_default_model_exported_never_imports_torch(tmp_path, cache):
    from test_inference_imports import NOT_ON_THE_INFERENCE_PATH

    path, sha, _ = resolve_model(None)
    onnxnets.open_onnx(path, sha)  # the first use: exported with torch
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "pt.nii.gz"))
    code = ("import json, sys\n"
            "from GTVAutoSegLib.cli import main\n"
            f"rc = main(['segment', {str(tmp_path / 'pt.nii.gz')!r}, '-o', {str(tmp_path / 'out')!r}, '--progress', 'none'])\n"
            "assert rc == 0, rc\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}
    assert "onnxruntime" in loaded and "SimpleITK" in loaded
    assert not loaded & {"torch", "onnx", "scipy", *NOT_ON_THE_INFERENCE_PATH}
    assert json.loads((tmp_path / "out" / "pt_report.json").read_text())["engine"] == "onnx"


def test_a_network_onnx_cannot_write_is_one_line_and_prints_nothing(tmp_path, cache, capfd):
    import torch

    from GTVAutoSegLib.models import register

    class Unexportable(torch.nn.Module):
        def forward(self, x):  # a Python-side loop over data the exporter cannot trace faithfully
            return torch.cat([torch.zeros_like(x[:, :1]), torch.special.erfcx(x[:, :1])], 1)

    register("test_unexportable_segmenter", kind="segmenter")(lambda cfg: Unexportable())
    c, s = NetConfig("test_max_classifier", params={"level": 0.8}), NetConfig("test_unexportable_segmenter")
    bundle = ModelBundle.from_networks(build_network(c), build_network(s), name="bad", version="0", classifier=c,
                                       segmenter=s, preprocess=PreprocessSpec(window=(-1000.0, 3000.0), size=64))
    with pytest.raises(onnxnets.ExportFailed) as info:
        onnxnets.open_onnx(_saved(tmp_path, bundle))
    assert "segmenter (test_unexportable_segmenter) cannot be exported to ONNX" in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the exporter's graph dump is not the user's business


def test_batch_forwards_the_engine_and_its_cases_run_on_it(tmp_path, cache):
    from GTVAutoSegLib.cli import build_parser
    from GTVAutoSegLib.raybatch import segment_flags

    flags = segment_flags(build_parser().parse_args(["batch", "x", "-o", "o", "--engine", "onnx"]))
    assert flags[flags.index("--engine") + 1] == "onnx"
    ct, _ = _phantom_with_marker()
    (tmp_path / "cts").mkdir()
    for name in ("pt_1", "pt_2"):
        sitk.WriteImage(ct.to_sitk(), str(tmp_path / "cts" / f"{name}.nii.gz"))
    path = _saved(tmp_path)
    assert main(["batch", str(tmp_path / "cts"), "-o", str(tmp_path / "out"), "--model", str(path), "--engine", "onnx",
                 "--progress", "none"]) == 0
    for name in ("pt_1", "pt_2"):
        assert json.loads((tmp_path / "out" / f"{name}_report.json").read_text())["engine"] == "onnx"
    assert main(["segment", str(tmp_path / "cts" / "pt_1.nii.gz"), "-o", str(tmp_path / "torch"), "--model", str(path),
                 "--engine", "torch", "--progress", "none"]) == 0
    assert (tmp_path / "out" / "pt_1.seg.nrrd").read_bytes() == (tmp_path / "torch" / "pt_1.seg.nrrd").read_bytes()


def test_an_export_this_onnxruntime_cannot_run_sends_auto_to_torch(tmp_path, cache, capsys):
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "pt.nii.gz"))
    path = _saved(tmp_path)
    folder = onnxnets.open_onnx(path).folder
    (folder / "segmenter.onnx").write_bytes(b"not a model this runtime reads")  # as from a newer exporter
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["nets"]["segmenter"].update(bytes=30, sha256=onnxnets.sha256_file(folder / "segmenter.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(onnxnets.EngineUnavailable, match="cannot run segmenter.onnx"):
        onnxnets.open_onnx(path)
    assert main(["segment", str(tmp_path / "pt.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(path),
                 "--device", "cpu", "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "cannot run segmenter.onnx: " in err and err.strip().endswith("running it on torch")
    assert len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "o" / "pt_report.json").read_text())["engine"] == "torch"


def test_a_full_disk_during_the_export_is_not_held_against_the_model(tmp_path, cache, monkeypatch):
    import errno

    path = _saved(tmp_path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnxnets, "_export_into", full)
    with pytest.raises(onnxnets.ExportFailed, match="cannot write the ONNX cache .*No space left"):
        onnxnets.open_onnx(path)
    assert not list((cache / "onnx").glob("*unsupported*")) and not list((cache / "onnx").glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setenv("GTVAUTOSEG_CACHE", str(cache))
    assert onnxnets.open_onnx(path).segmenter is not None  # tried again, and made


def test_export_onnx_prepares_the_cache_that_auto_then_uses(tmp_path, cache, capsys):
    path = _saved(tmp_path)
    assert main(["export-onnx", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ONNX export in" in out and (cache / "onnx" / onnxnets.sha256_file(path) / "manifest.json").is_file()
    assert main(["export-onnx", str(path)]) == 0  # an intact export is kept, not made again
    assert "exporting" not in capsys.readouterr().err
    assert main(["export-onnx", str(tmp_path / "missing.pt")]) == 2
