import json

import pytest
import torch

from GTVAutoSegLib.bundle import (ModelBundle, list_models, load_bundle, open_model, resolve_model,
                                  save_bundle, sha256_file)
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.preprocessing import PreprocessSpec


def _bundle(**kw):
    c, s = NetConfig("resnet18_classifier"), NetConfig("sanet", params={"use_ppm": False})
    return ModelBundle.from_networks(build_network(c), build_network(s), name="t", version="1.2.3",
                                     classifier=c, segmenter=s, preprocess=PreprocessSpec(size=64, window=(-800.0, 400.0)),
                                     threshold=0.37, target="PTV70", anatomic_region="head_and_neck",
                                     provenance={"data": "phantom"}, **kw)


def test_round_trip_keeps_weights_config_spec_and_threshold(tmp_path):
    b = _bundle()
    sha = save_bundle(b, tmp_path / "m.pt")
    assert sha == sha256_file(tmp_path / "m.pt")
    r = load_bundle(tmp_path / "m.pt", expected_sha256=sha)
    assert r.meta() == b.meta()
    clf, seg = r.build_networks()
    for k, v in b.segmenter_state.items():
        assert torch.equal(seg.state_dict()[k], v)
    assert not clf.training and not seg.training


def test_half_precision_bundle_is_half_the_size_and_loads(tmp_path):
    b = _bundle()
    save_bundle(b, tmp_path / "full.pt")
    save_bundle(b, tmp_path / "half.pt", half=True)
    full, half = (tmp_path / "full.pt").stat().st_size, (tmp_path / "half.pt").stat().st_size
    assert half < 0.55 * full
    _, seg = load_bundle(tmp_path / "half.pt").build_networks()
    w = b.segmenter_state["encoder.stem.0.weight"] if "encoder.stem.0.weight" in b.segmenter_state else next(iter(b.segmenter_state.values()))
    assert next(seg.parameters()).dtype == torch.float32
    assert w.dtype == torch.float32


def test_bad_model_files_are_refused(tmp_path):
    good = tmp_path / "m.pt"
    sha = save_bundle(_bundle(), good)
    with pytest.raises(GTVError, match="not found"):
        load_bundle(tmp_path / "missing.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(GTVError, match="truncated"):
        load_bundle(truncated)
    tampered = tmp_path / "tampered.pt"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(GTVError, match="SHA-256"):
        load_bundle(tampered, expected_sha256=sha)

    class Payload:  # an object whose unpickling would run code
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "gtvautoseg-bundle", "x": Payload()}, evil)
    with pytest.raises(GTVError, match="pickled code"):
        load_bundle(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(GTVError, match="not a GTVAutoSeg model bundle"):
        load_bundle(plain)


def test_strict_key_matching(tmp_path):
    b = _bundle()
    b.segmenter_state.pop(next(iter(b.segmenter_state)))
    save_bundle(b, tmp_path / "m.pt")
    with pytest.raises(GTVError, match="do not match"):
        load_bundle(tmp_path / "m.pt").build_networks()


def test_models_json_resolution_and_hash_enforcement(tmp_path):
    sha = save_bundle(_bundle(), tmp_path / "m.pt")
    mj = tmp_path / "Models.json"
    mj.write_text(json.dumps({"models": [{"name": "hn", "version": "1.2.3", "file": "m.pt", "sha256": sha,
                                          "title": "test", "default": True}]}))
    assert [e.name for e in list_models(mj)] == ["hn"]
    assert resolve_model(None, mj)[1] == sha
    assert open_model("hn", mj).threshold == pytest.approx(0.37)
    assert open_model("hn@1.2.3", mj).version == "1.2.3"
    # A listed file is held to its hash even when named by path.
    data = bytearray((tmp_path / "m.pt").read_bytes())
    data[100] ^= 0x01
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with pytest.raises(GTVError, match="SHA-256"):
        open_model(str(tmp_path / "m.pt"), mj)
    with pytest.raises(GTVError, match="neither a listed model"):
        open_model("nope", mj)
    (tmp_path / "empty.json").write_text(json.dumps({"models": []}))
    with pytest.raises(GTVError, match="no model is installed"):
        open_model(None, tmp_path / "empty.json")


def test_random_bytes_as_model_are_not_called_pickled_code(tmp_path):
    # Issue 12 item 13: random bytes were reported as "pickled code".
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(GTVError) as e:
        load_bundle(noise)
    assert "not a GTVAutoSeg model bundle" in str(e.value) and "pickled" not in str(e.value)
    cut = tmp_path / "cut.pt"
    good = tmp_path / "m.pt"
    save_bundle(_bundle(), good)
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) - 2000])  # the zip directory at the end is gone
    with pytest.raises(GTVError) as e:
        load_bundle(cut)
    assert "pickled" not in str(e.value) and "\n" not in str(e.value)


def test_a_fifo_or_folder_as_model_is_refused_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(GTVError, match="FIFO"):
        load_bundle(tmp_path / "pipe.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(GTVError, match="folder"):
        load_bundle(tmp_path / "dir.pt")


def test_anatomic_region_is_checked_when_a_bundle_is_built_and_loaded(tmp_path):
    # Issue 12 item 15: "head and neck" passed the build and failed only when the result was written.
    from GTVAutoSegLib.segfile import ANATOMIC_REGIONS
    from training import build_bundle

    with pytest.raises(GTVError, match="unknown anatomic region 'head and neck'"):
        _bundle().__class__(**{**_bundle().__dict__, "anatomic_region": "head and neck"})
    import inspect

    parser_default = inspect.signature(build_bundle.build).parameters["anatomic_region"].default
    assert parser_default in ANATOMIC_REGIONS
    # A bundle file from before the check: refused when loaded, before any inference.
    good = tmp_path / "m.pt"
    save_bundle(_bundle(), good)
    payload = torch.load(good, weights_only=True)
    meta = json.loads(payload["meta_json"])
    meta["anatomic_region"] = "head and neck"
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(GTVError, match="unknown anatomic region"):
        load_bundle(tmp_path / "old.pt")


def test_build_bundle_refuses_an_unknown_region_in_one_line(capsys):
    from training import build_bundle

    with pytest.raises(SystemExit) as e:
        build_bundle.main(["--classifier", "c.pt", "--segmenter", "s.pt", "--out", "o.pt",
                           "--anatomic-region", "head and neck"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_bare_name_means_the_default_or_newest_of_its_versions(tmp_path):
    old = _bundle()
    new = _bundle()
    new.version = "0.10.0"
    entries = [{"name": "hn", "version": "0.2.0", "file": "a.pt", "sha256": save_bundle(old, tmp_path / "a.pt")},
               {"name": "hn", "version": "0.10.0", "file": "b.pt", "sha256": save_bundle(new, tmp_path / "b.pt")}]
    mj = tmp_path / "Models.json"
    mj.write_text(json.dumps({"models": entries}))
    assert resolve_model("hn", mj)[2].version == "0.10.0"  # newest by number, not by text
    assert resolve_model("hn@0.2.0", mj)[2].version == "0.2.0"
    entries[0]["default"] = True
    mj.write_text(json.dumps({"models": entries}))
    assert resolve_model("hn", mj)[2].version == "0.2.0" and resolve_model(None, mj)[2].version == "0.2.0"
