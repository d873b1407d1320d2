"""A cold ``gtvautoseg segment`` pays for its imports first: it imports what inference needs and
nothing else (no MONAI, matplotlib, Slicer, DICOM writers or training code), checked in a fresh
interpreter; MONAI's UNet and ours (``models/unet.py``) are the same network."""

import json
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch

from GTVAutoSegLib.models.unet import UNet

from test_cascade import _phantom_with_marker

# Top-level packages the inference path must not import (each costs 0.1-1.4 s cold, or is not ours to load).
# nibabel is on it for a NIfTI input (its header check refuses truncated files), and pydicom with it.
NOT_ON_THE_INFERENCE_PATH = ("monai", "matplotlib", "slicer", "vtk", "training", "highdicom", "contourpy", "ray",
                             "pandas", "pydantic", "tensorboard")


def _imported(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}


def test_importing_the_cli_imports_no_numerics_at_all():
    loaded = _imported("import json, sys; import GTVAutoSegLib.cli; print(json.dumps(sorted(sys.modules)))")
    assert not loaded & {"torch", "numpy", "scipy", "SimpleITK", *NOT_ON_THE_INFERENCE_PATH}


def test_segment_on_torch_with_the_default_model_imports_only_what_inference_needs(tmp_path):
    # (with --engine onnx and an export, not even torch: tests/test_onnx_engine.py)
    ct, _ = _phantom_with_marker()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "pt.nii.gz"))
    loaded = _imported(
        "import json, sys\n"
        "from GTVAutoSegLib.cli import main\n"
        f"rc = main(['segment', {str(tmp_path / 'pt.nii.gz')!r}, '-o', {str(tmp_path / 'out')!r}, '--device', 'cpu',"
        " '--engine', 'torch', '--progress', 'none'])\n"
        "assert rc == 0, rc\n"
        "print(json.dumps(sorted(sys.modules)))")
    assert (tmp_path / "out" / "pt.seg.nrrd").is_file()
    assert {"torch", "SimpleITK"} <= loaded  # it did run
    assert not loaded & set(NOT_ON_THE_INFERENCE_PATH)


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_lets_idle_cpu_threads_sleep_unless_the_user_chose(preset, expected):
    # OpenMP reads the policy when torch loads it: it must be set before torch is imported.
    code = ("import os, sys\n"
            "from GTVAutoSegLib.cli import main\n"
            "rc = main(['info', '--list'])\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("preset", [None, ("OPENBLAS_THREAD_TIMEOUT", "28"), ("GOTO_THREAD_TIMEOUT", "24")])
def test_the_cli_lets_numpys_blas_threads_sleep_before_numpy_loads_it(preset):
    # OpenBLAS reads the timeout once, when numpy loads it: the CLI must set it before that, and
    # leave a timeout the user chose (under either of the names OpenBLAS reads) as it is.
    from GTVAutoSegLib.device import OPENBLAS_THREAD_TIMEOUT

    code = ("import os, sys, json\n"
            "from GTVAutoSegLib import cli, device\n"
            "seen = []\n"
            "real = device.passive_cpu_threads\n"
            "def spy():\n"
            "    seen.append('numpy' in sys.modules)\n"
            "    real()\n"
            "device.passive_cpu_threads = spy\n"
            "rc = cli.main(['info', '--list'])\n"
            "print(json.dumps([seen, 'numpy' in sys.modules, os.environ.get('OPENBLAS_THREAD_TIMEOUT'),"
            " os.environ.get('GOTO_THREAD_TIMEOUT')]))")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")}
    if preset:
        env[preset[0]] = preset[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen, numpy_loaded, openblas, goto = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == [False] and numpy_loaded  # set once, before numpy was loaded; numpy was loaded after
    if preset is None:
        assert (openblas, goto) == (OPENBLAS_THREAD_TIMEOUT, None)
    elif preset[0] == "OPENBLAS_THREAD_TIMEOUT":
        assert (openblas, goto) == ("28", None)
    else:
        assert (openblas, goto) == (None, "24")


@pytest.mark.parametrize("dims,res_units,channels,shape", [
    (2, 0, (32, 64, 128, 256, 512), (2, 3, 64, 64)),   # the shipped 2.5D U-Net
    (2, 2, (32, 64, 128, 256, 512), (1, 1, 32, 32)),   # resunet
    (3, 1, (16, 32, 64, 128, 256), (1, 1, 32, 32, 32)),  # the shipped 3D locator
])
def test_our_unet_is_monais_module_for_module(dims, res_units, channels, shape):
    from monai.networks.nets import UNet as MonaiUNet

    torch.manual_seed(0)
    kwargs = dict(spatial_dims=dims, in_channels=shape[1], out_channels=2, channels=channels,
                  strides=(2,) * (len(channels) - 1), num_res_units=res_units, norm="instance", dropout=0.0)
    theirs, ours = MonaiUNet(**kwargs).eval(), UNet(**kwargs).eval()
    assert [n for n, _ in theirs.named_modules()] == [n for n, _ in ours.named_modules()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert torch.equal(theirs(x), ours(x))
    with pytest.raises(ValueError, match="covers"):
        UNet(**{**kwargs, "norm": "group"})
