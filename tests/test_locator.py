"""The 3D locator and what the cascade does with it: its coarse grid and back, the slices it picks,
the in-plane region, the probability average, flip TTA, 2.5D inputs, bundle format 2, and a real
locator learning on phantoms. Stand-in networks (tests/fakes.py) make every expected voxel known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GTVAutoSegLib.bundle import ModelBundle, load_bundle, open_model, save_bundle
from GTVAutoSegLib.cascade import Cascade, CombineSpec, context_indices, located_slices, region_mask
from GTVAutoSegLib.coarse import CoarseSpec, from_coarse, labels_to_coarse, to_coarse
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec, prepare, to_model_space
from training.data import SliceTable, prepare_case
from training.engine import SliceSource
from training.train import Trainer

from fakes import BrightSegmenter, MaxClassifier
from test_training import phantom_table, tiny_config

CPU = torch.device("cpu")
COARSE = CoarseSpec((16, 16, 16))


def _slices(z=16, hw=32, bright=(5, 6, 7, 8)):
    """Air-grey slices with a bright block on ``bright``, left of centre (columns 4-11)."""
    x = np.full((z, hw, hw), 0.3, np.float32)
    for k in bright:
        x[k, 10:18, 4:12] = 0.95
    return x


# ------------------------------------------------------------------------------------ coarse grid


def test_coarse_grid_there_and_back_keeps_a_block_in_place():
    x = _slices(z=32)
    coarse = to_coarse(x, COARSE)
    assert coarse.shape == (16, 16, 16) and coarse.dtype == np.float32 and 0 <= coarse.min() <= coarse.max() <= 1
    back = from_coarse((coarse > 0.6).astype(np.float32), x.shape) >= 0.5
    block = x > 0.6
    assert 2 * (back & block).sum() / (back.sum() + block.sum()) > 0.8  # half-voxel aligned both ways


def test_label_coverage_keeps_the_target_inside_a_larger_structure():
    labels = np.zeros((32, 32, 32), np.uint8)
    labels[8:24, 8:24, 8:24] = 2  # another target volume
    labels[12:20, 12:20, 12:20] = 1  # the target inside it
    coarse = labels_to_coarse(labels, COARSE, 3)
    assert set(np.unique(coarse)) == {0, 1, 2}
    assert (coarse[6:10, 6:10, 6:10] == 1).all() and (coarse[4, 4:12, 4:12] == 2).all()
    assert (coarse == 1).sum() == 4 ** 3  # the 8-voxel cube at half resolution, no more


def test_label_maps_into_model_space_by_class():
    ct, mask = make_phantom(shape=(8, 64, 64), spacing=(1.0, 1.0, 2.5), seed=0, tumour_slices=4)
    labels = mask.array.astype(np.uint8)
    ring = np.zeros_like(labels, bool)
    ring[:, 5:60, 5:60] = True
    labels[ring & (labels == 0)] = 2
    _, state = prepare(ct, PreprocessSpec(size=32))
    model = to_model_space(labels, state, n_classes=3)
    assert np.array_equal(model == 1, to_model_space(mask.array, state) == 1)  # the target as before
    assert (model == 2).any() and not ((model == 2) & (to_model_space(mask.array, state) == 1)).any()


# ------------------------------------------------------------------------------------ cascade


def test_located_slices_and_the_region_around_the_mask():
    prior = np.zeros((10, 20, 20), np.float32)
    prior[4, 8:12, 8:12] = 0.9
    prior[5, 8:12, 8:12] = 0.4
    assert np.flatnonzero(located_slices(prior, 0.5, 0)).tolist() == [4]
    assert np.flatnonzero(located_slices(prior, 0.3, 1)).tolist() == [3, 4, 5, 6]
    region = region_mask(prior, 4.0, (2.0, 2.0))  # 2 pixels around the 0.5 mask, in-plane only
    assert region[4, 6, 10] and region[4, 10, 13] and not region[4, 5, 10] and not region[4, 10, 15]
    assert not region[5].any() and not region[3].any()


def _locator(level=0.8):
    return build_network(NetConfig("test_bright_locator", params={"level": level}))


def test_the_locator_picks_the_slices_and_the_classifier_never_runs():
    x = _slices()
    clf, seg = MaxClassifier(0.8), BrightSegmenter(0.8)
    cascade = Cascade(clf, seg, CPU, locator=_locator(), coarse=COARSE, combine=CombineSpec(gate="locator"))
    result = cascade(x, threshold=0.5)
    assert clf.calls == 0
    assert np.flatnonzero(result.selected).tolist() == [5, 6, 7, 8]
    assert seg.calls == 4 and result.seg_probs[~result.selected].max() == 0
    assert set(result.timings) == {"locator", "classifier", "segmenter"}
    assert result.slice_probs[5] > 0.9 and result.slice_probs[0] < 0.1  # the locator's view, for review
    assert cascade(x, threshold=1.01).selected.sum() == 0  # the model's threshold gates the locator's view

    both = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, locator=_locator(), coarse=COARSE,
                   combine=CombineSpec(gate="both", locator_margin=1))
    x2 = _slices()
    x2[14, 27, 27] = 0.95  # one bright pixel: the classifier takes slice 14, the coarse grid averages it away
    assert MaxClassifier(0.8)(torch.from_numpy(x2[14][None, None])).argmax(1).item() == 1
    assert np.flatnonzero(both(x2, 0.5).selected).tolist() == [5, 6, 7, 8]  # margin 1 adds 4 and 9, not bright


def test_weight_one_is_the_locator_alone_and_the_segmenter_does_not_run():
    x = _slices()
    seg = BrightSegmenter(0.8)
    loc = Cascade(None, seg, CPU, locator=_locator(), coarse=COARSE,
                  combine=CombineSpec(gate="locator", locator_weight=1.0))
    result = loc(x, 0.5)
    expected = Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(), coarse=COARSE,
                       combine=CombineSpec(gate="locator")).locate(x)
    assert seg.calls == 0
    np.testing.assert_allclose(result.seg_probs[result.selected], expected[result.selected], atol=1e-3)
    half = Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(), coarse=COARSE,
                   combine=CombineSpec(gate="locator", locator_weight=0.5))(x, 0.5)
    two_d = Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(), coarse=COARSE,
                    combine=CombineSpec(gate="locator"))(x, 0.5)
    mix = 0.5 * two_d.seg_probs.astype(np.float32) + 0.5 * expected
    np.testing.assert_allclose(half.seg_probs[half.selected], mix[half.selected], atol=2e-3)


def test_the_region_drops_2d_output_far_from_the_locator():
    x = _slices()
    x[5:7, 27, 27] = 0.95  # a bright pixel the 2D segmenter takes and the coarse grid averages away
    c = Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(0.7), coarse=COARSE,
                combine=CombineSpec(gate="none", region_margin_mm=2.0))
    prior = c.locate(x)
    assert prior[5, 11:17, 5:11].min() > 0.5 and prior[5, 27, 27] < 0.5
    unrestricted = Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(0.7), coarse=COARSE,
                           combine=CombineSpec(gate="none"))(x, 0.5).seg_probs
    out = c(x, 0.5, pixel_mm=(1.0, 1.0)).seg_probs
    assert unrestricted[5, 27, 27] > 0.9 and out[5, 27, 27] == 0
    assert out[5, 12:16, 6:10].min() > 0.9


class _LeftLooking(torch.nn.Module):
    """Foreground only in the left half of the image: not symmetric, so flip TTA changes it."""

    def forward(self, x):
        w = x.shape[-1]
        fg = torch.full_like(x[:, :1], -10.0)
        fg[..., : w // 2] = 10.0
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def test_flip_tta_averages_the_image_and_its_mirror():
    x = _slices()
    plain = Cascade(MaxClassifier(0.8), _LeftLooking(), CPU)(x, -1.0, use_classifier=False).seg_probs
    tta = Cascade(MaxClassifier(0.8), _LeftLooking(), CPU, combine=CombineSpec(tta_flip=True))(
        x, -1.0, use_classifier=False).seg_probs
    assert plain[:, :, :16].min() > 0.99 and plain[:, :, 16:].max() < 0.01
    np.testing.assert_allclose(tta.astype(np.float32), 0.5, atol=1e-3)


def test_combinations_that_need_a_missing_network_are_refused():
    with pytest.raises(GTVError, match="needs a slice classifier"):
        Cascade(None, BrightSegmenter(0.8), CPU, locator=_locator(), combine=CombineSpec(gate="classifier"))
    with pytest.raises(GTVError, match="needs a 3D locator"):
        Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, combine=CombineSpec(locator_weight=0.5))
    with pytest.raises(GTVError, match="gate must be one of"):
        CombineSpec(gate="maybe").validate()


# ------------------------------------------------------------------------------------ 2.5D


def test_context_indices_repeat_the_end_slices():
    assert context_indices(np.array([0, 4, 9]), 10, 3).tolist() == [[0, 0, 1], [3, 4, 5], [8, 9, 9]]
    assert context_indices(np.array([2]), 10, 1).tolist() == [[2]]
    with pytest.raises(ValueError):
        context_indices(np.array([2]), 10, 2)


def test_training_batches_are_the_inputs_inference_builds():
    table = phantom_table(2, 0)
    source = SliceSource(table, CPU, context=3)
    patient_rows = np.flatnonzero(table.patient == 1)
    stack = table.images[patient_rows].astype(np.float32)
    x, _, _ = source.batch(patient_rows[[0, 5, 11]])
    cascade = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, segmenter_context=3)
    (_, _, expected), = list(cascade._batches(stack, np.array([0, 5, 11]), 8, 3))
    assert x.shape == (3, 3, 64, 64) and torch.equal(x, torch.from_numpy(expected))


# ------------------------------------------------------------------------------------ bundle


def test_bundle_format_2_round_trip_without_a_classifier(tmp_path):
    seg_cfg = NetConfig("test_bright_segmenter", in_channels=3, params={"level": 0.8})
    loc_cfg = NetConfig("test_bright_locator", params={"level": 0.8})
    bundle = ModelBundle.from_networks(
        None, build_network(seg_cfg), locator_net=build_network(loc_cfg),
        name="loc", version="0.0.1", classifier=None, segmenter=seg_cfg, locator=loc_cfg,
        preprocess=PreprocessSpec(size=32), coarse=COARSE, segmenter_context=3,
        combine=CombineSpec(gate="locator", locator_margin=1, tta_flip=True), target="PTV70")
    save_bundle(bundle, tmp_path / "b.pt")
    back = load_bundle(tmp_path / "b.pt")
    assert back.meta() == bundle.meta() and back.classifier is None and back.build_networks()[0] is None
    ct, mask = make_phantom(shape=(12, 64, 64), spacing=(1.0, 1.0, 2.5), seed=3, contrast_hu=400.0, tumour_slices=5)
    result = Segmenter(back, "cpu")(ct)
    assert result.mask.same_grid(ct) and result.mask.array.any()
    assert np.isfinite(result.slice_probs).all()  # the locator's per-slice view
    with pytest.raises(GTVError, match="context is 1 slices"):
        ModelBundle(name="x", version="0", classifier=None, segmenter=seg_cfg, locator=loc_cfg,
                    preprocess=PreprocessSpec(size=32), combine=CombineSpec(gate="locator"))


def test_the_shipped_format_1_bundle_still_loads_as_a_plain_cascade():
    bundle = open_model("hcf-openkbp-ptv70@0.1.0")
    assert bundle.locator is None and bundle.combine == CombineSpec() and bundle.segmenter_context == 1


def test_the_default_model_is_0_2_0_and_segments_a_real_ct(shared_data):
    """The shipped 0.2.0 end to end on OpenKBP validation patient pt_201 (Dice 0.572 in the
    model-selection table): locator gate, 2.5D U-Net, the average, the inverse onto the CT's grid."""
    from GTVAutoSegLib.metrics import dice
    from training.data import load_case, openkbp_cases

    bundle = open_model(None)
    assert (bundle.version, bundle.classifier, bundle.combine.gate, bundle.threshold) == ("0.2.0", None, "locator", 0.9)
    case = next(c for c in openkbp_cases(shared_data / "openkbp", "validation") if c.patient == "pt_201")
    ct, ref = load_case(case)
    result = Segmenter(bundle, "cpu")(ct)
    assert result.mask.same_grid(ct)
    assert dice(result.mask.array, ref.array) == pytest.approx(0.572, abs=0.005)
    assert (result.slice_probs[result.selected] >= 0.9).all() and (result.slice_probs[~result.selected] < 0.9).all()


# ------------------------------------------------------------------------------------ training


def test_a_small_locator_learns_on_phantoms_and_bundles_with_a_2d_segmenter(tmp_path):
    parts = []
    for k in range(24):
        ct, mask = make_phantom(shape=(16, 64, 64), spacing=(1.0, 1.0, 2.5), seed=k, contrast_hu=300.0,
                                tumour_slices=6)
        parts.append((f"ph{k}", *prepare_case(ct, mask, PreprocessSpec(size=32))))
    table = SliceTable.concatenate(parts)
    train_t, val_t = table.subset([f"ph{k}" for k in range(20)]), table.subset([f"ph{k}" for k in range(20, 24)])
    net = '{"name": "unet3d", "params": {"channels": [8, 16, 32], "strides": [2, 2]}}'
    cfg = tiny_config(tmp_path / "loc", f"network={net}", 'preprocess={"size": 32}', 'coarse={"shape": [16, 32, 32]}',
                      'loss={"name": "dice_ce"}', "batch_size=4", "max_epochs=6", 'precision="fp32"',
                      "optim.lr=0.01", "augment.enabled=false", "seed=0")
    trainer = Trainer(cfg, train_t, val_t)
    untrained = trainer.validate().metrics["val_dice"]
    summary = trainer.fit()
    assert summary["best_metrics"]["val_dice"] > untrained + 0.2, (untrained, summary["best_metrics"])
    assert summary["throughput"]["memory_format"] == "channels_last_3d"


def test_build_bundle_takes_a_network_from_a_bundle_and_a_locator_run(tmp_path, capsys):
    from training import build_bundle

    table = phantom_table(3, 0)
    net = '{"name": "unet3d", "params": {"channels": [8, 16], "strides": [2]}}'
    cfg = tiny_config(tmp_path / "loc", f"network={net}", 'coarse={"shape": [16, 32, 32]}', 'loss={"name": "dice_ce"}',
                      "batch_size=2", "max_epochs=1", 'precision="fp32"', "augment.enabled=false")
    Trainer(cfg, table, phantom_table(2, 50)).fit()
    source = tmp_path / "hcf.pt"
    seg_cfg = NetConfig("test_bright_segmenter", params={"level": 0.8})
    cls_cfg = NetConfig("test_max_classifier", params={"level": 0.8})
    save_bundle(ModelBundle.from_networks(build_network(cls_cfg), build_network(seg_cfg), name="hcf", version="1",
                                          classifier=cls_cfg, segmenter=seg_cfg, preprocess=PreprocessSpec(size=64),
                                          threshold=0.3), source)
    out = tmp_path / "combined.pt"
    assert build_bundle.main(["--segmenter", str(source), "--classifier", str(source), "--locator",
                              str(tmp_path / "loc" / "run" / "best.pt"), "--out", str(out),
                              "--combine", "gate=both", "--combine", "locator_weight=0.25"]) == 0
    combined = load_bundle(out)
    assert combined.threshold == 0.3 and combined.combine == CombineSpec(gate="both", locator_weight=0.25)
    assert combined.coarse == CoarseSpec((16, 32, 32)) and combined.locator.name == "unet3d"
    assert combined.provenance["segmenter"]["from_bundle"] == "hcf 1"
    assert build_bundle.main(["--segmenter", str(source), "--out", str(tmp_path / "x.pt")]) == 2
    assert "needs a --classifier, a --locator, or both" in capsys.readouterr().err


def test_an_ensemble_of_locators_averages_their_probabilities(tmp_path):
    from training import build_bundle

    table, val = phantom_table(3, 0), phantom_table(2, 50)
    net = '{"name": "unet3d", "params": {"channels": [8, 16], "strides": [2]}}'
    runs = []
    for seed in (0, 1):
        cfg = tiny_config(tmp_path / f"loc{seed}", f"network={net}", 'coarse={"shape": [16, 32, 32]}',
                          'loss={"name": "dice_ce"}', "batch_size=2", "max_epochs=1", 'precision="fp32"',
                          "augment.enabled=false", f"seed={seed}")
        Trainer(cfg, table, val).fit()
        runs.append(str(tmp_path / f"loc{seed}" / "run" / "best.pt"))
    seg = tmp_path / "seg.pt"
    seg_cfg = NetConfig("test_bright_segmenter", params={"level": 0.8})
    save_bundle(ModelBundle.from_networks(None, build_network(seg_cfg), locator_net=_locator(), name="s", version="1",
                                          classifier=None, segmenter=seg_cfg, locator=NetConfig("test_bright_locator"),
                                          preprocess=PreprocessSpec(size=64), combine=CombineSpec(gate="locator")), seg)
    assert build_bundle.main(["--segmenter", str(seg), "--locator", runs[0], "--locator", runs[1],
                              "--out", str(tmp_path / "ens.pt")]) == 0
    ens = load_bundle(tmp_path / "ens.pt")
    assert ens.locator.name == "locator_ensemble" and ens.locator.params["count"] == 2
    x = torch.rand(1, 1, 16, 32, 32)
    members = [build_bundle.load_part(r, "locator").module().eval() for r in runs]
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        got = torch.softmax(ens.build_locator()(x), 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(GTVError, match="one architecture"):
        build_bundle.build(None, seg, tmp_path / "bad.pt", "b", "1", locator_ckpt=[runs[0], seg])
