"""``gtvautoseg batch``: serially and on a local Ray cluster (2 workers), against ``gtvautoseg segment``."""

import csv
import threading
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

from GTVAutoSegLib.bundle import save_bundle
from GTVAutoSegLib.cli import main
from GTVAutoSegLib.outputs import atomic_output, remove_temporaries

from test_cascade import _fake_bundle, _phantom_with_marker

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small CTs, one file that is no image, and a bundle with the test networks."""
    root = tmp_path_factory.mktemp("cohort")
    cts = root / "cts"
    cts.mkdir()
    for i, direction in enumerate([None, (1, 0, 0, 0, -1, 0, 0, 0, 1), None, (0, 1, 0, 1, 0, 0, 0, 0, -1)]):
        ct, _ = _phantom_with_marker(direction)
        sitk.WriteImage(ct.to_sitk(), str(cts / f"case{i}.nii.gz"))
    (cts / "broken.nii.gz").write_bytes(b"not an image")
    model = root / "fake.pt"
    save_bundle(_fake_bundle(), model)
    serial = root / "serial"
    good = sorted(str(p) for p in cts.glob("case*.nii.gz"))
    assert main(["segment", *good, "-o", str(serial), "--model", str(model), "--device", "cpu", "--progress", "none"]) == 0
    return cts, model, serial


def _summary(folder: Path) -> dict[str, dict]:
    with open(folder / "summary.csv", newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def _assert_same_outputs(out: Path, serial: Path) -> None:
    """Every mask file byte for byte as ``gtvautoseg segment`` wrote it, no temporary file left."""
    masks = sorted(p.name for p in serial.iterdir() if p.name.endswith((".seg.nrrd", ".nii.gz")))
    assert len(masks) == 8
    for name in masks:
        assert (out / name).read_bytes() == (serial / name).read_bytes(), name
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_serial_batch_segments_like_segment_and_goes_on_past_a_failed_case(cohort, tmp_path, capsys):
    cts, model, serial = cohort
    out = tmp_path / "out"
    rc = main(["batch", str(cts), "-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none"])
    assert rc == 2  # one case failed
    rows = _summary(out)
    assert sorted(rows) == ["broken", "case0", "case1", "case2", "case3"]
    assert rows["broken"]["status"] == "failed" and "not a readable image" in rows["broken"]["error"]
    assert all(rows[f"case{i}"]["status"] == "ok" and rows[f"case{i}"]["slices_segmented"] == "4" for i in range(4))
    assert rows["case0"]["outputs"] == "case0.seg.nrrd case0_label.nii.gz"
    _assert_same_outputs(out, serial)
    assert "4/5 cases segmented" in capsys.readouterr().out


def _refuses_a_missing_model(cts: Path, tmp_path: Path, capsys, *flags: str) -> None:
    rc = main(["batch", str(cts), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "none.pt"),
               "--progress", "none", *flags])
    assert rc == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Token auth")]
    assert len(err) == 1 and err[0].startswith("gtvautoseg: error: model ") and "none.pt" in err[0]
    assert list((tmp_path / "out").iterdir()) == []


def test_batch_refuses_a_model_it_cannot_load_in_one_line(cohort, tmp_path, capsys):
    _refuses_a_missing_model(cohort[0], tmp_path, capsys)


def test_batch_refuses_an_input_taken_for_the_ray_address(cohort, tmp_path, capsys):
    cts, model, _ = cohort
    rc = main(["batch", "--ray", str(cts), str(cts / "case0.nii.gz"), "-o", str(tmp_path / "out"), "--model", str(model)])
    assert rc == 2 and "that is a path, not a Ray address" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_remove_temporaries_takes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    target = tmp_path / "pt.seg.nrrd"
    (tmp_path / ".pt.tmp-0123abcd.seg.nrrd").write_bytes(b"half")  # as atomic_output names them
    (tmp_path / ".pt.tmp-0123abcd.nii.gz").write_bytes(b"other format")
    (tmp_path / ".pt2.tmp-0123abcd.seg.nrrd").write_bytes(b"other case")
    target.write_bytes(b"previous result")
    assert remove_temporaries(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pt.tmp-0123abcd.nii.gz", ".pt2.tmp-0123abcd.seg.nrrd",
                                                          "pt.seg.nrrd"]
    with atomic_output(target) as tmp:  # the name remove_temporaries looks for is atomic_output's own
        tmp.write_bytes(b"new")
        assert remove_temporaries(target) == 1 and not tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs on this machine. Its workers register the test networks and the
    first one to write a label map while the marker file is absent is killed (tests/raybatch_hooks.py)."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray") / "killed"
    marker.write_text("not yet armed\n")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 2**20, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "GTV_TEST_DIE_MARKER": str(marker),
                                       "OMP_NUM_THREADS": "1"},
                          "worker_process_setup_hook": "raybatch_hooks.die_once_mid_case"})
    yield marker
    ray.shutdown()


def test_ray_batch_refuses_a_model_it_cannot_load_in_one_line(cohort, local_ray, tmp_path, capsys):
    _refuses_a_missing_model(cohort[0], tmp_path, capsys, "--ray", "--workers", "2")


def test_ray_batch_with_two_workers_writes_the_serial_runs_bytes(cohort, local_ray, tmp_path):
    cts, model, serial = cohort
    out = tmp_path / "out"
    rc = main(["batch", str(cts), "-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none",
               "--ray", "--workers", "2"])
    assert rc == 2
    rows = _summary(out)
    assert rows["broken"]["status"] == "failed" and "not a readable image" in rows["broken"]["error"]
    assert [rows[f"case{i}"]["status"] for i in range(4)] == ["ok"] * 4
    assert len({row["worker"] for row in rows.values()}) == 2  # both workers took cases
    _assert_same_outputs(out, serial)


def test_ray_batch_redoes_the_case_of_a_killed_worker_and_leaves_nothing_partial(cohort, local_ray, tmp_path):
    cts, model, serial = cohort
    local_ray.unlink()  # armed: the next label map written kills its worker, once
    out = tmp_path / "out"
    rc = main(["batch", *sorted(str(p) for p in cts.glob("case*")), "-o", str(out), "--model", str(model),
               "--device", "cpu", "--progress", "none", "--ray", "--workers", "2", "--retries", "1"])
    assert rc == 0
    killed_pid, killed_path = local_ray.read_text().split()  # a worker was killed mid-write
    assert Path(killed_path).name.startswith(".") and ".tmp-" in Path(killed_path).name
    rows = _summary(out)
    assert [rows[f"case{i}"]["status"] for i in range(4)] == ["ok"] * 4
    assert all(row["worker"].rsplit(":", 1)[1] != killed_pid for row in rows.values())
    _assert_same_outputs(out, serial)
    assert int(killed_pid) != os.getpid()


def test_serial_batch_overlaps_reading_and_writing_with_one_segmentation_at_a_time(cohort, tmp_path, monkeypatch):
    """Two cases in flight: the next one is read while the first is segmented or written, the
    segmentations never overlap, a read error is its case's failure, outputs as `segment` wrote them."""
    import time

    from GTVAutoSegLib import io as gio
    from GTVAutoSegLib.pipeline import Segmenter

    cts, model, serial = cohort
    folder = tmp_path / "cts"
    folder.mkdir()
    for name in ("case0", "case1", "case3"):
        (folder / f"{name}.nii.gz").write_bytes((cts / f"{name}.nii.gz").read_bytes())
    data = (cts / "case2.nii.gz").read_bytes()
    (folder / "case2.nii.gz").write_bytes(data[: len(data) // 2])
    events, lock = [], threading.Lock()

    def log(what, name):
        with lock:
            events.append((time.perf_counter(), what, name))

    real_read, real_write, real_call = gio.read_image, gio.write_labelmap, Segmenter.__call__

    def read_image(path):
        log("read", Path(path).name.split(".")[0])
        return real_read(path)

    def write_labelmap(mask, path):
        real_write(mask, path)
        log("written", Path(path).name.lstrip(".").split("_label")[0])

    def call(self, image, *a, **k):
        log("segment start", None)
        try:
            return real_call(self, image, *a, **k)
        finally:
            log("segment end", None)

    monkeypatch.setattr(gio, "read_image", read_image)
    monkeypatch.setattr(gio, "write_labelmap", write_labelmap)
    monkeypatch.setattr(Segmenter, "__call__", call)
    out = tmp_path / "out"
    rc = main(["batch", str(folder), "-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none"])
    assert rc == 2
    rows = _summary(out)
    assert rows["case2"]["status"] == "failed" and "truncated" in rows["case2"]["error"]
    assert [rows[c]["status"] for c in ("case0", "case1", "case3")] == ["ok", "ok", "ok"]
    for name in ("case0.seg.nrrd", "case1_label.nii.gz", "case3.seg.nrrd"):
        assert (out / name).read_bytes() == (serial / name).read_bytes()
    assert not (out / "case2.seg.nrrd").exists()
    when = {(what, name): t for t, what, name in events if name}
    assert when[("read", "case1")] < when[("written", "case0")]  # case1 read before case0 was written
    depth = 0
    for _, what, _ in sorted(events):
        depth += {"segment start": 1, "segment end": -1}.get(what, 0)
        assert depth <= 1  # never two segmentations at once
