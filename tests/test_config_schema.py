"""Issue 12 item 16: training configs are checked by pydantic against their dataclasses, one line each."""

import pytest

from GTVAutoSegLib.errors import GTVError
from training.config import TrainConfig, config_from_dict, load_config


@pytest.mark.parametrize(
    "override, expected",
    [
        ("batch_size=abc", "config batch_size: Input should be a valid integer"),
        ("augment.p_rotate=x", "config augment.p_rotate: Input should be a valid number"),
        ("data.max_train_patients=1.5", "config data.max_train_patients: Input should be a valid integer"),
        ("augment.p_rotate=1.5", "less than or equal to 1"),
        ("batch_size=0", "greater than or equal to 1"),
        ("data.folds=1", "greater than or equal to 2"),
        ("optim.lr=-1", "greater than 0"),
        ("augment.zoom_range=[0.9]", "config augment.zoom_range"),
        ("optim.learning_rate=0.1", "unknown config key(s) in optim: learning_rate; known: lr"),
        ("recall_target=0", "greater than 0"),
    ],
)
def test_bad_values_are_refused_in_one_line(override, expected):
    with pytest.raises(GTVError) as e:
        load_config(None, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_good_values_are_converted_and_defaults_kept():
    cfg = load_config(None, ["batch_size=8", "augment.zoom_range=[0.9, 1.1]", "data.max_train_patients=3",
                             "out_dir=2024"])
    assert cfg.batch_size == 8 and cfg.augment.zoom_range == (0.9, 1.1) and cfg.data.max_train_patients == 3
    assert cfg.out_dir == "2024" and cfg.optim.lr == TrainConfig().optim.lr
    assert isinstance(cfg, TrainConfig)  # the dataclass itself, not a pydantic copy of it


def test_to_dict_round_trips_through_the_schema():
    cfg = load_config(None, ['network={"name": "resnet18_classifier"}', "loss.name=ce", "augment.p_vflip=0"])
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
