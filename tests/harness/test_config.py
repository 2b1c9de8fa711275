import pytest

from harness.config import RunConfig, TrainConfig, build, flatten, merge, parse_overrides
from harness.errors import HarnessError


def test_overrides_parse_yaml_scalars_into_nested_dicts():
    parsed = parse_overrides(["train.lr=0.5", "model.freeze_clip=false", "folds=5", "data.options.columns.id=vid"])
    assert parsed == {
        "train": {"lr": 0.5},
        "model": {"freeze_clip": False},
        "folds": 5,
        "data": {"options": {"columns": {"id": "vid"}}},
    }


def test_override_without_equals_sign_is_refused():
    with pytest.raises(HarnessError, match="must look like key=value"):
        parse_overrides(["train.lr"])


def test_exponents_without_a_dot_are_numbers():
    # YAML 1.1 reads 3e-4 as a string; a float field takes it as the number the user meant.
    config = build(RunConfig, merge(parse_overrides(["train.lr=3e-4"])))
    assert config.train.lr == 3e-4


def test_merge_drops_none_and_merges_deeply():
    merged = merge({"train": {"lr": 1.0, "epochs": 3}}, {"train": {"lr": None, "epochs": 5}}, None, {"seed": 1})
    assert merged == {"train": {"lr": 1.0, "epochs": 5}, "seed": 1}


def test_build_validates_names_and_types():
    config = build(RunConfig, {"model": "m", "train": {"lr": 1, "epochs": 2}})
    assert isinstance(config.train, TrainConfig) and config.train.lr == 1.0 and isinstance(config.train.lr, float)
    with pytest.raises(HarnessError, match=r"Unknown config key 'train.lrr'|Unknown train key 'train.lrr'"):
        build(RunConfig, {"train": {"lrr": 1}})
    with pytest.raises(HarnessError, match="train.epochs must be an integer, got 'many'"):
        build(RunConfig, {"train": {"epochs": "many"}})
    with pytest.raises(HarnessError, match="train.amp must be true or false"):
        build(RunConfig, {"train": {"amp": 1}})
    with pytest.raises(HarnessError, match="fold_scheme must be"):
        build(RunConfig, {"fold_scheme": 3})


def test_flatten_joins_keys_with_dots():
    assert flatten({"train": {"lr": 1e-3}, "seed": 1, "data": {"options": {}}}) == {
        "train.lr": 1e-3,
        "seed": 1,
        "data.options": {},
    }
