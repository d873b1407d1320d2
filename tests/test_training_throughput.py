"""How a training run spends the CPU: precision chosen by measurement, validation every N epochs,
and the run's own slices/s against the bare step in ``summary.json``. Nothing here is timed."""

from __future__ import annotations

import json

import pytest
import torch

from GTVAutoSegLib.losses import build_loss
from GTVAutoSegLib.models import NetConfig, build_network
from training.config import config_from_dict, load_config
from training.engine import BF16_MARGIN, StepLoss, choose_precision
from training.train import Trainer

from test_training import phantom_table, tiny_config

SEG = ('network={"name": "sanet"}', 'balance="1:0"', "augment.enabled=false")


def test_precision_probe_measures_on_a_copy_and_picks_the_faster():
    torch.manual_seed(0)
    net = build_network(NetConfig("unet", params={"channels": [8, 16, 32], "strides": [2, 2]})).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = StepLoss("segmenter", build_loss("cr"))
    x, y, flag = torch.rand(4, 1, 32, 32), (torch.rand(4, 32, 32) > 0.8).long(), torch.ones(4, dtype=torch.long)

    chosen, rates = choose_precision("auto", net, loss_fn, x, y, flag)
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())
    assert chosen == ("bf16" if rates["bf16"] >= BF16_MARGIN * rates["fp32"] else "fp32")
    # the probe trained a copy: the run's weights and BatchNorm statistics are untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    chosen, rates = choose_precision("fp32", net, loss_fn, x, y, flag)
    assert chosen == "fp32" and list(rates) == ["fp32"]


def test_validation_every_n_epochs_and_always_after_the_last(tmp_path):
    train_t, val_t = phantom_table(3, 0), phantom_table(2, 50)
    trainer = Trainer(tiny_config(tmp_path, *SEG, "max_epochs=3", "val_every=2", 'precision="fp32"'), train_t, val_t)
    summary = trainer.fit()
    validated = [r["epoch"] for r in trainer.history if "val_dice" in r]
    assert validated == [2, 3] and [r["epoch"] for r in trainer.history] == [1, 2, 3]
    assert summary["best_epoch"] in (2, 3)

    t = summary["throughput"]
    assert t["precision"] == "fp32" and t["threads"] == torch.get_num_threads()
    assert t["memory_format"] == "channels_last" and t["bare_step_slices_per_s"]["fp32"] > 0
    ratio = t["wall_slices_per_s"] / t["bare_step_slices_per_s"]["fp32"]  # both to 4 digits in the summary
    assert 0 < t["wall_slices_per_s"] and t["wall_over_bare"] == pytest.approx(ratio, rel=2e-3, abs=1e-3)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["throughput"] == t


def test_a_budget_stop_after_an_unvalidated_epoch_still_validates_it(tmp_path):
    train_t, val_t = phantom_table(3, 0), phantom_table(2, 50)
    trainer = Trainer(tiny_config(tmp_path, *SEG, "max_epochs=5", "val_every=10"), train_t, val_t)
    trainer._out_of_time = lambda: trainer.epoch >= 1  # the budget runs out right after epoch 1
    summary = trainer.fit()
    assert summary["stop_reason"] == "time_budget" and summary["best_epoch"] == 1
    assert (tmp_path / "run" / "best.pt").is_file() and "val_dice" in trainer.history[-1]


def test_configs_that_said_amp_still_load():
    base = load_config(None, []).to_dict()
    for amp, precision in ((False, "fp32"), (True, "auto")):
        old = {k: v for k, v in base.items() if k != "precision"} | {"amp": amp}
        assert config_from_dict(old).precision == precision
