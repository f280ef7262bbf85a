"""Metric records as people read them: per class figures and kept checkpoints."""

from __future__ import annotations

from mlsm import scores

VAL = {"split": "val", "epoch": 2, "name": "classes", "classes": ["a", "b", "c"],
       "precision": [1.0, 0.5, 0.9], "recall": [0.95, 0.4, 1.0],
       "confusion": [[19, 1, 0], [3, 2, 0], [0, 0, 10]]}  # fmt: skip


def test_the_latest_per_class_record_of_each_split_is_read() -> None:
    older = {**VAL, "epoch": 1, "recall": [0.0, 0.0, 0.0]}
    test = {**VAL, "split": "test", "confusion": None}
    found = scores.per_class([older, {"split": "val", "name": "loss", "value": 1.0}, VAL, test])
    assert list(found) == ["val", "test"]
    assert found["val"].epoch == 2
    assert found["val"].weakest(2) == [("b", 0.4), ("a", 0.95)]
    assert found["val"].shares()[1] == [0.6, 0.4, 0.0]
    assert found["test"].confusion is None
    assert found["test"].shares() == []


def test_malformed_per_class_records_are_skipped() -> None:
    broken = [{**VAL, "precision": [1.0]}, {**VAL, "classes": "abc"},
              {**VAL, "recall": None}]  # fmt: skip
    assert scores.per_class(broken) == {}
    ragged = scores.per_class([{**VAL, "confusion": [[1, 2]]}])
    assert ragged["val"].confusion is None


def test_checkpoint_folders_follow_keep_checkpoints() -> None:
    assert scores.checkpoint_folders({}) == ["best/", "last/"]
    assert scores.checkpoint_folders({"keepCheckpoints": "last"}) == ["last/"]
    assert scores.checkpoint_folders({"keepCheckpoints": "every-epoch"}) == [
        "best/", "last/", "epoch-N/"]  # fmt: skip
