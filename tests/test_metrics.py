"""peftkit's local `evaluate` metric modules: hand-computed values, offline loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.metrics import LOCAL_METRICS, load_metric, metric_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def accuracy_f1():
    return load_metric("accuracy_f1", keep_in_memory=True)


@pytest.fixture(scope="module")
def seqeval_f1():
    return load_metric("seqeval_f1", keep_in_memory=True)


def test_accuracy_and_macro_f1_by_hand(accuracy_f1):
    # class 0: tp 1, fp 0, fn 1 -> F1 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 2, fp 1, fn 0 -> 4/5
    scores = accuracy_f1.compute(predictions=[0, 1, 1, 2, 2, 2], references=[0, 1, 0, 2, 2, 1])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)


def test_weighted_and_micro_f1_by_hand(accuracy_f1):
    # class 0 (support 3): tp 3, fp 1, fn 0 -> 6/7; class 1 (support 1): tp 0 -> 0
    predictions, references = [0, 0, 0, 0], [0, 0, 0, 1]
    assert accuracy_f1.compute(predictions=predictions, references=references, average="macro")["f1"] == pytest.approx(3 / 7)
    assert accuracy_f1.compute(predictions=predictions, references=references, average="weighted")["f1"] == pytest.approx(18 / 28)
    assert accuracy_f1.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(0.75)


def test_macro_f1_averages_over_present_classes_or_given_labels(accuracy_f1):
    scores = accuracy_f1.compute(predictions=[0, 1], references=[0, 1])
    assert scores == {"accuracy": 1.0, "f1": 1.0}
    # A class that neither appears nor is predicted only counts when named in labels.
    assert accuracy_f1.compute(predictions=[0, 1], references=[0, 1], labels=[0, 1, 2])["f1"] == pytest.approx(2 / 3)


def test_macro_f1_matches_scikit_learn(accuracy_f1):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    import numpy as np

    rng = np.random.default_rng(0)
    references, predictions = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    ours = accuracy_f1.compute(predictions=predictions, references=references)
    assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(references, predictions))
    assert ours["f1"] == pytest.approx(sklearn_metrics.f1_score(references, predictions, average="macro"))


def test_accuracy_f1_rejects_bad_input(accuracy_f1):
    with pytest.raises(ValueError, match="average"):
        accuracy_f1.compute(predictions=[0], references=[0], average="median")


def test_seqeval_entity_scores_by_hand(seqeval_f1):
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    predictions = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # true entities: PER, LOC, ORG(2 words); predicted: PER (right), ORG (wrong type), ORG (wrong span)
    scores = seqeval_f1.compute(predictions=predictions, references=references)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 7)
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert scores["per_type"]["LOC"]["number"] == 1 and scores["per_type"]["LOC"]["recall"] == 0.0


def test_seqeval_precision_differs_from_recall(seqeval_f1):
    # 2 true entities, 1 predicted and right: precision 1, recall 1/2, F1 2/3.
    scores = seqeval_f1.compute(predictions=[["B-PER", "O", "O"]], references=[["B-PER", "O", "B-LOC"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))


def test_seqeval_without_entities_is_zero_not_nan(seqeval_f1):
    scores = seqeval_f1.compute(predictions=[["O", "O"]], references=[["O", "O"]])
    assert scores["f1"] == 0.0 and scores["accuracy"] == 1.0


def test_local_metric_paths_are_evaluate_modules():
    for name in LOCAL_METRICS:
        folder = metric_path(name)
        assert (folder / f"{name}.py").is_file()
    with pytest.raises(KeyError, match="accuracy_f1"):
        metric_path("bleu")


def test_unknown_metric_offline_names_the_local_ones(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="accuracy_f1, seqeval_f1"):
        load_metric("peftkit-no-such-metric")


@pytest.mark.subprocess
def test_evaluate_load_works_offline_in_a_fresh_hf_home(tmp_path):
    """`evaluate.load(<our folder>)` copies the module into HF_HOME's module cache and imports it:
    it must work with an empty HF_HOME and no hub access."""
    code = (
        "import json, sys, evaluate\n"
        "acc = evaluate.load(sys.argv[1])\n"
        "seq = evaluate.load(sys.argv[2])\n"
        "print(json.dumps([acc.compute(predictions=[1, 0], references=[1, 1]),"
        " seq.compute(predictions=[['B-PER']], references=[['B-PER']])['f1']]))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_MODULES_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", code, str(metric_path("accuracy_f1")), str(metric_path("seqeval_f1"))],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy, f1 = json.loads(done.stdout.strip().splitlines()[-1])
    assert accuracy == {"accuracy": 0.5, "f1": pytest.approx(1 / 3)}
    assert f1 == 1.0
    assert (tmp_path / "hf" / "modules").is_dir()  # evaluate's copy went into the fresh HF_HOME
