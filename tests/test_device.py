"""Device names (checked without torch) and what they resolve to on this machine."""

import sys

import pytest
import torch

from GTVAutoSegLib.cli import main
from GTVAutoSegLib.device import available_devices, check_device_name, resolve_device
from GTVAutoSegLib.errors import GTVError


def test_names_are_checked_and_normalised():
    assert [check_device_name(n) for n in ("auto", "CPU", "gpu", "cuda", "cuda:1", " mps ", None)] == \
        ["auto", "cpu", "cuda", "cuda", "cuda:1", "mps", "auto"]
    for bad in ("tpu", "cuda:", "cuda:x", "gpu0", "cuda1"):
        with pytest.raises(GTVError, match="unknown device"):
            check_device_name(bad)


def test_device_names_are_checked_without_importing_torch():
    import subprocess

    code = ("import sys; from GTVAutoSegLib.device import check_device_name; check_device_name('cuda:2'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_resolution_follows_what_torch_offers(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(GTVError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Test GPU {i}")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(GTVError, match=r"torch sees 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GTVError, match="no Apple MPS"):
        resolve_device("mps")
    assert [name for name, _ in available_devices()] == ["auto", "cpu", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert available_devices()[-1] == ("mps", "Apple GPU (MPS)")


def test_cli_refuses_an_unknown_device_in_one_line(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "argument --device: unknown device 'tpu'" in err and err.count("\n") == 1
