"""Networks: parameter counts against the paper, shapes, gradients, the SAM ablation, the registry."""

import json

import pytest
import torch
import torch.nn.functional as F

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import (
    NetConfig,
    available_networks,
    build_network,
    count_parameters,
    default_params,
    network_kind,
    register,
)
from GTVAutoSegLib.models import registry
from GTVAutoSegLib.models.resnet import ResNet18Encoder
from GTVAutoSegLib.models.sanet import warp

torch.set_flush_denormal(True)

SIZE = 64


@pytest.fixture(scope="module")
def sanet_params() -> dict[str, int]:
    counts = {}
    for key, params in {
        "full": {},
        "no_sam": {"use_sam": False},
        "no_ppm": {"use_ppm": False},
        "neither": {"use_sam": False, "use_ppm": False},
    }.items():
        counts[key] = count_parameters(build_network(NetConfig("sanet", params=params)))
    return counts


def test_classifier_has_resnet18_parameter_count():
    net = build_network(NetConfig("resnet18_classifier"))
    # torchvision's resnet18 with a 1-channel stem and a 2-class FC has exactly this many.
    assert count_parameters(net) == 11_171_266


def test_sanet_parameter_count_matches_paper(sanet_params):
    assert 12_600_000 <= sanet_params["full"] <= 12_900_000  # paper: 12.82 M
    hcf = sanet_params["full"] + count_parameters(build_network(NetConfig("resnet18_classifier")))
    assert 23_900_000 <= hcf <= 24_100_000  # paper: HCF ~24.0 M


def test_sanet_ablations_are_smaller(sanet_params):
    assert sanet_params["no_sam"] < sanet_params["full"]
    assert sanet_params["no_ppm"] < sanet_params["full"]
    assert sanet_params["neither"] < min(sanet_params["no_sam"], sanet_params["no_ppm"])


def _library_networks(kind=None):
    # tests/fakes.py registers deterministic stand-ins ("test_*") for the cascade tests.
    return [n for n in available_networks(kind) if not n.startswith("test_")]


# Params a network needs to run at the test size: UNETR takes exactly one input size; VNet's
# depth must be a multiple of 16.
TEST_PARAMS = {"unetr": {"img_size": SIZE}, "vnet": {"patch_depth": 16}}


@pytest.mark.parametrize("name", _library_networks())
def test_forward_shape_and_finite_gradients(name):
    # Batch size 1 in training mode also checks that no BatchNorm sees a single value per channel.
    torch.manual_seed(0)
    net = build_network(NetConfig(name, params=TEST_PARAMS.get(name, {}))).train()
    kind = network_kind(name)
    spatial = (16, SIZE, SIZE) if kind in ("segmenter3d", "locator3d") else (SIZE, SIZE)
    out = net(torch.randn(1, 1, *spatial))
    if name == "sanet_mtl":
        seg, cls = out
        assert seg.shape == (1, 2, SIZE, SIZE) and cls.shape == (1, 2)
        loss = seg.square().mean() + cls.square().mean()
    elif kind == "classifier":
        assert out.shape == (1, 2)
        loss = out.square().mean()
    else:
        assert out.shape == (1, 2, *spatial)
        loss = out.square().mean()
    loss.backward()
    # MONAI's UNet++ builds its deep-supervision heads even with deep supervision off, and its
    # transformer blocks a cross-attention norm even without cross-attention (UNETR).
    unused = [n for n, p in net.named_parameters()
              if p.grad is None and "final_conv_0_" not in n and "norm_cross_attn" not in n]
    assert unused == []
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_parameter_counts_of_the_peers():
    # Reported in the comparison tables; pinned so a MONAI upgrade that changes them is noticed.
    counts = {name: count_parameters(build_network(NetConfig(name))) for name in ("unetr", "vnet", "unet3d")}
    vit_s = build_network(NetConfig("unetr", params={"img_size": 96, "hidden_size": 384, "mlp_dim": 1536, "num_heads": 6}))
    assert counts["unetr"] == 87_164_866  # ViT-B/16 encoder
    assert count_parameters(vit_s) == 22_754_626  # ViT-S/16 encoder, the comparison's UNETR
    assert counts["vnet"] == 45_597_898
    assert counts["unet3d"] == 2_448_988  # the 3D locator


def test_unetr_and_vnet_refuse_sizes_they_cannot_take():
    with pytest.raises(GTVError, match="patch_depth must be a positive multiple of 16"):
        build_network(NetConfig("vnet", params={"patch_depth": 24}))
    with pytest.raises(GTVError, match="16 x 16 patches"):
        build_network(NetConfig("unetr", params={"patch_size": 8}))


@pytest.mark.parametrize("shape", [(96, 96), (64, 96)])
def test_sanet_output_matches_input_size(shape):
    net = build_network(NetConfig("sanet")).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, *shape)).shape == (1, 2, *shape)


def test_encoder_stage_shapes():
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        plain = [tuple(f.shape[1:]) for f in ResNet18Encoder(1)(x)]
        dilated = [tuple(f.shape[1:]) for f in ResNet18Encoder(1, dilate_last=True)(x)]
    assert plain == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert dilated == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]


def _sanet_pair():
    torch.manual_seed(0)
    with_sam = build_network(NetConfig("sanet")).eval()
    without = build_network(NetConfig("sanet", params={"use_sam": False})).eval()
    result = without.load_state_dict(with_sam.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".offset." in k or ".down_" in k for k in result.unexpected_keys)
    return with_sam, without


def test_untrained_sam_equals_plain_upsampling():
    with_sam, without = _sanet_pair()
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        a, b = with_sam(x), without(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_learned_offset_changes_the_output():
    with_sam, without = _sanet_pair()
    with torch.no_grad():
        for sam in with_sam.align:
            sam.offset.weight.normal_(0, 0.05)
        x = torch.randn(1, 1, SIZE, SIZE)
        assert not torch.allclose(with_sam(x), without(x), rtol=1e-3)


def test_warp_offset_is_in_pixels():
    image = torch.arange(48.0).reshape(1, 1, 6, 8)
    zero = torch.zeros(1, 2, 12, 16)
    upsampled = F.interpolate(image, size=(12, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(warp(image, zero), upsampled)
    shift = torch.zeros(1, 2, 6, 8)
    shift[:, 0] = 1.0  # sample one pixel to the right
    torch.testing.assert_close(warp(image, shift)[..., :-1], image[..., 1:])


def test_sanet_channels_last_and_autocast():
    torch.manual_seed(0)
    net = build_network(NetConfig("sanet")).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        last = net(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    torch.testing.assert_close(last, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert low.shape == ref.shape and torch.isfinite(low).all()


def test_params_override_the_architecture():
    small = build_network(NetConfig("unet", params={"channels": [8, 16, 32], "strides": [2, 2]}))
    assert count_parameters(small) < count_parameters(build_network(NetConfig("unet")))
    deeplab = build_network(NetConfig("deeplabv3plus", params={"aspp_channels": 64, "decoder_channels": 64}))
    with torch.no_grad():
        assert deeplab.eval()(torch.randn(1, 1, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)
    mtl = build_network(NetConfig("sanet_mtl", in_channels=3, out_channels=4, params={"num_classes": 3})).eval()
    with torch.no_grad():
        seg, cls = mtl(torch.randn(1, 3, SIZE, SIZE))
    assert seg.shape == (1, 4, SIZE, SIZE) and cls.shape == (1, 3)


def test_kinds():
    assert network_kind("resnet18_classifier") == "classifier"
    assert _library_networks("classifier") == ["resnet18_classifier"]
    segmenters = {"sanet", "sanet_mtl", "unet", "resunet", "attention_unet", "unetpp", "basic_unet", "deeplabv3plus",
                  "unetr"}
    assert set(_library_networks("segmenter")) == segmenters
    assert _library_networks("segmenter3d") == ["vnet"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(GTVError, match="unknown network 'segnet'.*sanet"):
        build_network(NetConfig("segnet"))
    with pytest.raises(GTVError, match="unknown network"):
        network_kind("segnet")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"use_attention": True}, "no param 'use_attention'; it takes: use_ppm, use_sam"),
        ({"use_sam": 1}, "'use_sam' must be bool"),
    ],
)
def test_bad_params_raise(params, message):
    with pytest.raises(GTVError, match=message):
        build_network(NetConfig("sanet", params=params))


def test_values_the_network_rejects_raise_gtverror():
    with pytest.raises(GTVError, match="cannot build network 'unet'"):
        build_network(NetConfig("unet", params={"strides": [2, 2]}))


def test_netconfig_round_trip_through_json():
    cfg = NetConfig("unet", in_channels=1, out_channels=3, params={"channels": (8, 16, 32), "strides": [2, 2]})
    assert cfg.params["channels"] == [8, 16, 32]  # normalised as JSON would store it
    back = NetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert count_parameters(build_network(back)) == count_parameters(build_network(cfg))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "sanet", "params": {"x": object()}}, "not JSON-serialisable"),
        ({"name": "sanet", "out_channels": 0}, "out_channels must be a positive integer"),
        ({"name": "sanet", "depth": 3}, "unknown keys: depth"),
        ({"in_channels": 1}, "no 'name'"),
    ],
)
def test_netconfig_from_bad_dict_raises(data, message):
    with pytest.raises(GTVError, match=message):
        NetConfig.from_dict(data)


def test_default_params_are_a_copy():
    params = default_params("unet")
    params["channels"].append(1024)
    assert default_params("unet")["channels"] == [32, 64, 128, 256, 512]


def test_register_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def other(cfg):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register("sanet", kind="segmenter")(other)
    with pytest.raises(ValueError, match="kind"):
        register("identity", kind="regressor")
    register("identity", kind="segmenter")(other)
    assert "identity" in available_networks()
