import dataclasses

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.folds import fold_file_path, get_folds, make_folds, validate_folds


@pytest.mark.parametrize("scheme", ["kfold", "stratified", "group"])
def test_every_row_is_validated_exactly_once(regression_dataset, scheme):
    folds = make_folds(regression_dataset, scheme, 4, seed=0)
    validate_folds(folds, regression_dataset, 4, check_groups=scheme == "group")
    assert list(folds["id"]) == list(regression_dataset.train["id"])
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    if scheme == "group":
        assert (folds.assign(g=regression_dataset.train["group"]).groupby("g")["fold"].nunique() == 1).all()


def test_stratified_folds_balance_the_target(regression_dataset):
    folds = make_folds(regression_dataset, "stratified", 3, seed=0)
    means = regression_dataset.train["x"].groupby(folds["fold"].to_numpy()).mean()
    assert means.max() - means.min() < 0.5


def test_same_seed_same_folds_other_seed_other_folds(regression_dataset):
    a = make_folds(regression_dataset, "kfold", 3, seed=1)
    b = make_folds(regression_dataset, "kfold", 3, seed=1)
    c = make_folds(regression_dataset, "kfold", 3, seed=2)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize("k, message", [(1, "at least 2, got 1"), (61, "more than the 60 training rows")])
def test_impossible_fold_counts_are_refused(regression_dataset, k, message):
    with pytest.raises(HarnessError, match=message):
        make_folds(regression_dataset, "kfold", k, seed=0)


def test_unknown_scheme_lists_the_valid_ones(regression_dataset):
    with pytest.raises(HarnessError, match="valid schemes: kfold, stratified, group"):
        make_folds(regression_dataset, "random", 3, seed=0)


def test_group_scheme_needs_enough_groups(regression_dataset):
    few_groups = dataclasses.replace(regression_dataset, train=regression_dataset.train.assign(group=0))
    with pytest.raises(HarnessError, match="more than the 1 groups"):
        make_folds(few_groups, "group", 3, seed=0)


def test_validation_catches_broken_fold_files(regression_dataset):
    folds = make_folds(regression_dataset, "group", 3, seed=0)
    with pytest.raises(HarnessError, match="more than one fold"):
        validate_folds(pd.concat([folds, folds.head(1)]), regression_dataset, 3)
    with pytest.raises(HarnessError, match="1 missing"):
        validate_folds(folds.iloc[1:], regression_dataset, 3)
    group = regression_dataset.train["group"]
    largest = group.value_counts().index[0]  # a group with several rows: moving one splits it
    row = group[group == largest].index[0]
    moved = folds.copy()
    moved.loc[row, "fold"] = (moved.loc[row, "fold"] + 1) % 3
    with pytest.raises(HarnessError, match="appears in more than one fold"):
        validate_folds(moved, regression_dataset, 3, check_groups=True)


def test_fold_file_is_written_once_and_reused(regression_dataset, tmp_path):
    path, folds = get_folds(regression_dataset, "kfold", 3, seed=0, folds_dir=tmp_path)
    assert path == fold_file_path(tmp_path, regression_dataset, "kfold", 3, 0)
    assert path.name.startswith("toy-") and path.name.endswith("__kfold__k3__s0.csv")
    edited = folds.assign(fold=(folds["fold"] + 1) % 3)  # a valid but different assignment
    edited.to_csv(path, index=False)
    _, reread = get_folds(regression_dataset, "kfold", 3, seed=0, folds_dir=tmp_path)
    assert reread.equals(edited)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


def test_nothing_is_written_when_folds_are_impossible(regression_dataset, tmp_path):
    with pytest.raises(HarnessError):
        get_folds(regression_dataset, "kfold", 1, seed=0, folds_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
