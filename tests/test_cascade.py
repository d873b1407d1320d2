import numpy as np
import pytest
import torch

from GTVAutoSegLib.bundle import ModelBundle, load_bundle, save_bundle
from GTVAutoSegLib.cascade import Cascade, average_windows, z_windows
from GTVAutoSegLib.errors import Cancelled
from GTVAutoSegLib.metrics import dice
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter, keep_components
from GTVAutoSegLib.bundle import PostprocessSpec
from GTVAutoSegLib.preprocessing import PreprocessSpec

from fakes import BrightSegmenter, MaxClassifier

CPU = torch.device("cpu")


def _slices(z=10, hw=32, bright=(2, 3, 7)):
    x = np.full((z, hw, hw), 0.3, np.float32)
    for k in bright:
        x[k, 10:14, 12:20] = 0.95
    return x


def test_segmenter_runs_only_on_selected_slices_and_others_are_zero():
    x = _slices()
    clf, seg = MaxClassifier(0.8), BrightSegmenter(0.8)
    result = Cascade(clf, seg, CPU, classifier_batch=4, segmenter_batch=2)(x, threshold=0.5)
    assert np.array_equal(np.flatnonzero(result.selected), [2, 3, 7])
    assert clf.calls == 10 and seg.calls == 3
    assert result.seg_probs[~result.selected].max() == 0.0
    assert (result.seg_probs[2, 10:14, 12:20] > 0.99).all()
    assert result.seg_probs[2].sum() == pytest.approx(32, abs=0.1)
    assert result.slice_probs.shape == (10,) and set(result.timings) == {"classifier", "segmenter"}


def test_batching_does_not_change_the_result():
    x = _slices(z=13, bright=(0, 5, 12))
    a = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, 64, 16)(x, 0.5)
    b = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, 3, 1)(x, 0.5)
    assert np.array_equal(a.seg_probs, b.seg_probs) and np.array_equal(a.slice_probs, b.slice_probs)


def test_threshold_override_changes_selection():
    x = _slices()
    c = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU)
    assert c(x, threshold=1.01).selected.sum() == 0  # nothing passes: all-zero volume
    assert c(x, threshold=-1.0).selected.sum() == 10  # every slice: the segmenter alone


def test_without_the_classifier_every_slice_is_segmented_and_the_classifier_never_runs():
    x = _slices()
    clf, seg = MaxClassifier(0.8), BrightSegmenter(0.8)
    result = Cascade(clf, seg, CPU, segmenter_batch=4)(x, threshold=0.5, use_classifier=False)
    assert clf.calls == 0 and seg.calls == 10
    assert result.selected.all() and np.isnan(result.slice_probs).all()
    assert (result.seg_probs[2, 10:14, 12:20] > 0.99).all()


@pytest.mark.parametrize("z, depth, starts", [(10, 16, [0]), (16, 16, [0]), (40, 16, [0, 8, 16, 24]),
                                                (37, 16, [0, 8, 16, 21])])
def test_z_windows_cover_every_slice_with_half_overlap(z, depth, starts):
    got = z_windows(z, depth)
    assert got == starts
    covered = np.zeros(max(z, depth), int)
    for s in got:
        covered[s:s + depth] += 1
    assert (covered[:z] >= 1).all() and max(s + depth for s in got) == max(z, depth)


def test_average_windows_means_the_overlaps_and_leaves_uncovered_slices_zero():
    # windows of 4 at 0 and 2 over 8 slices (slices 6-7 uncovered): window i predicts i + 1 everywhere
    calls = []

    def predict(i, start):
        calls.append((i, start))
        return np.full((4, 2, 3), float(i + 1), np.float32)

    out = average_windows((8, 2, 3), 4, [0, 2], predict)
    assert calls == [(0, 0), (1, 2)] and out.shape == (8, 2, 3)
    np.testing.assert_allclose(out[:, 0, 0], [1, 1, 1.5, 1.5, 2, 2, 0, 0])


def test_3d_segmenter_runs_on_windows_near_selected_slices_only():
    x = _slices(z=40, bright=(2, 3))
    clf, seg = MaxClassifier(0.8), BrightSegmenter(0.8)
    result = Cascade(clf, seg, CPU, segmenter_depth=16)(x, threshold=0.5)
    assert np.array_equal(np.flatnonzero(result.selected), [2, 3])
    assert seg.calls == 1  # only the first window (slices 0-15) holds a selected slice
    assert (result.seg_probs[2, 10:14, 12:20] > 0.99).all()
    assert result.seg_probs[~result.selected].max() == 0.0
    alone = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, segmenter_depth=16)(x, 0.5, use_classifier=False)
    assert alone.seg_probs.shape == x.shape and (alone.seg_probs[3, 10:14, 12:20] > 0.99).all()
    short = Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, segmenter_depth=16)(x[:5], 0.5)  # padded to 16
    assert short.seg_probs.shape == (5, 32, 32) and (short.seg_probs[2, 10:14, 12:20] > 0.99).all()


def test_pipeline_with_a_3d_segmenter_maps_back_onto_the_grid():
    ct, marker = _phantom_with_marker()
    spec = PreprocessSpec(window=(-1000.0, 3000.0), size=64)
    c, s = NetConfig("test_max_classifier"), NetConfig("test_bright_segmenter3d", params={"patch_depth": 16})
    bundle = ModelBundle.from_networks(build_network(c), build_network(s), name="fake3d", version="0.0.1",
                                       classifier=c, segmenter=s, preprocess=spec, threshold=0.5)
    seg = Segmenter(bundle, device="cpu")
    assert seg.cascade.segmenter_depth == 16
    result = seg(ct)
    assert result.mask.same_grid(ct) and dice(result.mask.array, marker) >= 0.9


def test_progress_is_reported_and_cancel_stops_between_batches():
    x = _slices(z=12)
    seen = []
    Cascade(MaxClassifier(0.8), BrightSegmenter(0.8), CPU, 4, 1)(x, 0.5, progress=lambda s, f: seen.append((s, f)))
    clf_fracs = [f for s, f in seen if s == "classifier"]
    assert clf_fracs == sorted(clf_fracs) and clf_fracs[-1] == 1.0 and len(clf_fracs) == 3
    assert [s for s, _ in seen if s == "segmenter"]

    clf = MaxClassifier(0.8)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 1  # allow the first batch, stop at the second

    with pytest.raises(Cancelled):
        Cascade(clf, BrightSegmenter(0.8), CPU, 4, 1)(x, 0.5, cancel=cancel)
    assert clf.calls == 4


def test_multitask_segmenter_output_is_accepted():
    net = build_network(NetConfig("sanet_mtl"))
    x = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    out = Cascade(build_network(NetConfig("resnet18_classifier")), net, CPU)(x, threshold=-1.0)
    assert out.seg_probs.shape == (2, 64, 64) and np.isfinite(out.seg_probs.astype(np.float32)).all()


def _fake_bundle(size=64, threshold=0.5):
    spec = PreprocessSpec(window=(-1000.0, 3000.0), size=size)
    c, s = NetConfig("test_max_classifier", params={"level": 0.8}), NetConfig("test_bright_segmenter", params={"level": 0.8})
    return ModelBundle.from_networks(build_network(c), build_network(s), name="fake", version="0.0.1",
                                     classifier=c, segmenter=s, preprocess=spec, threshold=threshold)


def _phantom_with_marker(direction=None):
    # A 2500 HU block on slices 6-9: the only thing the window (-1000, 3000) maps above 0.8.
    ct, _ = make_phantom(shape=(16, 80, 72), spacing=(1.2, 0.9, 2.5), seed=3, direction=direction)
    marker = np.zeros(ct.array.shape, np.uint8)
    marker[6:10, 30:44, 28:40] = 1
    arr = ct.array.copy()
    arr[marker > 0] = 2500
    return ct.with_array(arr), marker


@pytest.mark.parametrize("direction", [None, (1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 0, 1, 0, 0, 0, 0, -1)])
def test_pipeline_maps_the_result_back_onto_the_input_grid(tmp_path, direction):
    ct, marker = _phantom_with_marker(direction)
    path = tmp_path / "fake.pt"
    save_bundle(_fake_bundle(), path)
    seg = Segmenter(load_bundle(path), device="cpu")
    result = seg(ct)
    assert result.mask.same_grid(ct)
    assert result.mask.array.dtype == np.uint8
    assert dice(result.mask.array, marker) >= 0.9
    # Slices are reported in the input's own slice order.
    slice_axis_has_marker = marker.reshape(marker.shape[0], -1).any(axis=1) if direction is None or direction[-1] != 0 else None
    if slice_axis_has_marker is not None:
        assert np.array_equal(result.selected, slice_axis_has_marker)
    assert set(result.timings) >= {"preprocess", "classifier", "segmenter", "inverse"}


def test_high_threshold_gives_an_empty_mask_on_the_same_grid():
    ct, _ = _phantom_with_marker()
    result = Segmenter(_fake_bundle(threshold=0.5), device="cpu", threshold=1.01)(ct)
    assert result.mask.array.sum() == 0 and result.mask.same_grid(ct)


def test_keep_components_keeps_the_largest():
    m = np.zeros((6, 20, 20), np.uint8)
    m[1:3, 2:6, 2:6] = 1        # 32 voxels
    m[1:5, 10:16, 10:16] = 1    # 144 voxels
    kept = keep_components(m, (1.0, 1.0, 1.0), PostprocessSpec(keep_largest=1))
    assert kept.sum() == 144 and kept[1, 3, 3] == 0
    assert keep_components(m, (1.0, 1.0, 1.0), PostprocessSpec()).sum() == 176
    # 0.1 cc = 100 mm^3 at 1 mm voxels: the small one goes.
    assert keep_components(m, (1.0, 1.0, 1.0), PostprocessSpec(min_component_cc=0.1)).sum() == 144


def test_keep_components_in_the_mask_s_box_equals_the_whole_grid():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    m = np.zeros((30, 40, 50), np.uint8)
    m[5:25, 8:30, 10:45] = ndimage.binary_opening(rng.random((20, 22, 35)) < 0.6).astype(np.uint8)
    for spec in (PostprocessSpec(keep_largest=1), PostprocessSpec(keep_largest=3), PostprocessSpec(min_component_cc=0.02)):
        labels, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.ones(n, bool)
        if spec.min_component_cc > 0:
            keep &= sizes * 1e-3 >= spec.min_component_cc
        if spec.keep_largest > 0:
            keep[np.argsort(sizes)[::-1][spec.keep_largest:]] = False
        expected = np.isin(labels, np.flatnonzero(keep) + 1).astype(np.uint8)
        assert np.array_equal(keep_components(m, (1.0, 1.0, 1.0), spec), expected)
    assert not keep_components(np.zeros_like(m), (1.0, 1.0, 1.0), PostprocessSpec(keep_largest=1)).any()


def test_precision_bf16_runs_the_networks_in_bf16_on_the_cpu_and_says_so():
    from GTVAutoSegLib.errors import GTVError

    ct, _ = _phantom_with_marker()
    bundle = _fake_bundle()
    seen = []
    plain = Segmenter(bundle, "cpu")
    assert plain.cascade.precision == "fp32"  # auto on the CPU
    fp32 = plain(ct)
    seg = Segmenter(bundle, "cpu", precision="bf16")
    for net in (seg.cascade.classifier.net, seg.cascade.segmenter.net):  # the torch modules
        net.register_forward_pre_hook(lambda m, i: seen.append(
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
    bf16 = seg(ct)
    assert len(seen) >= 2 and all(seen)  # both networks ran under bf16 autocast
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert dice(bf16.mask.array, fp32.mask.array) > 0.9
    with pytest.raises(GTVError, match="precision"):
        Segmenter(bundle, "cpu", precision="fp16")
