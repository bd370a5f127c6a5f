"""peftkit.data: every source and format, canonical columns, labels, splits and each bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from helpers_data import sentiment_rows, shared_data_dir, write_conll, write_csv, write_jsonl

import peftkit.data as pdata
from peftkit.data import DataError, default_data_dir, demo_data_path, label_names, load_data

# --------------------------------------------------------------------------- demo dataset


def test_demo_dataset_loads_by_name_and_path():
    data = load_data("demo", "classification")
    assert {s: len(d) for s, d in data.items()} == {"train": 300, "validation": 60, "test": 60}
    names = label_names(data, "classification")
    assert names == sorted(
        ["card_lost", "refund_request", "change_address", "delivery_status", "cancel_order", "billing_question"]
    )
    assert isinstance(data["train"].features["label"], ClassLabel)
    assert data["train"].column_names == ["text", "label"]
    texts = {s: set(d["text"]) for s, d in data.items()}
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"] or texts["validation"] & texts["test"])
    assert len(load_data(str(demo_data_path()), "classification")["test"]) == 60


def test_demo_csvs_match_their_generator():
    spec = importlib.util.spec_from_file_location("make_demo", demo_data_path() / "make_demo.py")
    make_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo)
    built = make_demo.build()
    data = load_data("demo", "classification")
    for split, rows in built.items():
        names = data[split].features["label"].names
        assert [(r["text"], r["label"]) for r in rows] == [(t, names[i]) for t, i in zip(data[split]["text"], data[split]["label"], strict=True)]
    assert "not a benchmark" in (demo_data_path() / "README.md").read_text()


# --------------------------------------------------------------------------- formats and columns


def test_csv_with_string_labels_and_column_mapping(tmp_path):
    rows = [{"id": i, "review": r["text"], "sentiment": r["label"]} for i, r in enumerate(sentiment_rows(20))]
    train = write_csv(tmp_path / "train.csv", rows[:14])
    val = write_csv(tmp_path / "val.csv", rows[14:])
    data = load_data(None, "classification", train=train, validation=val, text_column="review", label_column="sentiment")
    assert list(data) == ["train", "validation"]
    assert data["train"].column_names == ["text", "label"]
    assert label_names(data, "classification") == ["neg", "pos"]
    assert data["train"][0] == {"text": "a lovely film 0", "label": 1}
    assert data["validation"].features["label"].names == ["neg", "pos"]


def test_integer_labels_sort_numerically_and_match_string_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 1, 2, 10, 1])])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "2"}, {"text": "y", "label": 10}])
    data = load_data(None, "classification", train=train, test=test, validation_fraction=0.34)
    assert label_names(data, "classification") == ["1", "2", "10"]
    assert data["test"]["label"] == [1, 2]


def test_tsv_json_and_jsonl(tmp_path):
    rows = sentiment_rows(12)
    write_csv(tmp_path / "tsv" / "train.tsv", rows, delimiter="\t")
    write_csv(tmp_path / "tsv" / "dev.tsv", rows[:4], delimiter="\t")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "train.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "json" / "validation.jsonl", rows[:4])
    write_jsonl(tmp_path / "json" / "test.jsonl", rows[4:6])
    tsv = load_data(tmp_path / "tsv", "classification")
    js = load_data(str(tmp_path / "json"), "classification")
    assert {s: len(d) for s, d in tsv.items()} == {"train": 12, "validation": 4}
    assert {s: len(d) for s, d in js.items()} == {"train": 12, "validation": 4, "test": 2}
    assert tsv["train"]["text"] == js["train"]["text"] == [r["text"] for r in rows]


def test_parquet(tmp_path):
    Dataset.from_list(sentiment_rows(8)).to_parquet(str(tmp_path / "train.parquet"))
    data = load_data(tmp_path, "classification")
    assert (len(data["train"]), len(data["validation"])) == (7, 1)


def test_csv_quoted_commas_are_kept(tmp_path):
    rows = [{"text": 'Hello, "world", again', "label": "a"}, {"text": "plain", "label": "b"}] * 3
    data = load_data(write_csv(tmp_path / "train.csv", rows), "classification")
    assert 'Hello, "world", again' in list(data["train"]["text"]) + list(data["validation"]["text"])


def test_directory_files_can_be_overridden(tmp_path):
    write_csv(tmp_path / "d" / "train.csv", sentiment_rows(10))
    write_csv(tmp_path / "d" / "test.csv", sentiment_rows(4))
    other = write_csv(tmp_path / "other_test.csv", sentiment_rows(2, offset=1))
    data = load_data(tmp_path / "d", "classification", test=other)
    assert data["test"]["text"] == [r["text"] for r in sentiment_rows(2, offset=1)]


def test_conll_two_and_four_columns(tmp_path):
    sentences = [[("EU", "B-ORG"), ("rejects", "O"), ("German", "B-MISC"), ("call", "O")], [("Peter", "B-PER"), ("Blackburn", "I-PER")]]
    write_conll(tmp_path / "c" / "train.txt", sentences)
    write_conll(tmp_path / "c" / "dev.txt", sentences[1:])
    data = load_data(tmp_path / "c", "token-classification")
    assert data["train"].column_names == ["tokens", "tags"]
    assert data["train"]["tokens"] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    names = label_names(data, "token-classification")
    assert names == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    assert [names[i] for i in data["validation"][0]["tags"]] == ["B-PER", "I-PER"]
    four = [[(w, "NNP", "B-NP", t) for w, t in s] for s in sentences]
    data4 = load_data(None, "token-classification", train=write_conll(tmp_path / "c4.conll", four, docstart=False),
                      validation_fraction=0.5)
    assert label_names(data4, "token-classification") == names  # tags come from the last column


def test_token_classification_from_jsonl_with_int_tags(tmp_path):
    rows = [{"words": ["a", "b"], "ner": [0, 1]}, {"words": ["c"], "ner": [2]}, {"words": ["d", "e"], "ner": [0, 0]}]
    data = load_data(None, "token-classification", train=write_jsonl(tmp_path / "t.jsonl", rows),
                     tokens_column="words", tags_column="ner", validation_fraction=0.34)
    assert label_names(data, "token-classification") == ["0", "1", "2"]


def test_causal_lm_prompt_response(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(10)]
    data = load_data(write_jsonl(tmp_path / "train.jsonl", rows), "causal-lm", prompt_column="q", response_column="a")
    assert data["train"].column_names == ["prompt", "response"]
    assert (len(data["train"]), len(data["validation"])) == (9, 1)
    assert label_names(data, "causal-lm") is None


def test_swapped_column_names_do_not_collide(tmp_path):
    rows = [{"text": "pos", "label": "great movie"}, {"text": "neg", "label": "bad movie"}] * 3
    data = load_data(write_csv(tmp_path / "train.csv", rows), "classification", text_column="label", label_column="text")
    assert set(data["train"]["text"]) <= {"great movie", "bad movie"}
    assert label_names(data, "classification") == ["neg", "pos"]


# --------------------------------------------------------------------------- splits


def test_validation_carved_from_train_seeded_and_stratified(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    a = load_data(None, "classification", train=train, seed=1)
    b = load_data(None, "classification", train=train, seed=1)
    c = load_data(None, "classification", train=train, seed=2)
    assert (len(a["train"]), len(a["validation"])) == (36, 4)
    assert a["validation"]["text"] == b["validation"]["text"] != c["validation"]["text"]
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])
    assert sorted(a["validation"]["label"]) == [0, 0, 1, 1]  # stratified by label


def test_max_samples_take_seeded_subsets(tmp_path):
    write_csv(tmp_path / "train.csv", sentiment_rows(50))
    write_csv(tmp_path / "validation.csv", sentiment_rows(20))
    write_csv(tmp_path / "test.csv", sentiment_rows(20, offset=3))
    a = load_data(tmp_path, "classification", max_train_samples=10, max_eval_samples=5, seed=3)
    b = load_data(tmp_path, "classification", max_train_samples=10, max_eval_samples=5, seed=3)
    c = load_data(tmp_path, "classification", max_train_samples=10, max_eval_samples=5, seed=4)
    assert {s: len(d) for s, d in a.items()} == {"train": 10, "validation": 5, "test": 5}
    assert a["train"]["text"] == b["train"]["text"] != c["train"]["text"]
    assert label_names(a, "classification") == ["neg", "pos"]  # the label set comes from all of train
    assert len(load_data(tmp_path, "classification", max_train_samples=1000)["train"]) == 50


# --------------------------------------------------------------------------- bad input


def test_missing_column_lists_the_available_ones(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}])
    with pytest.raises(DataError, match=r"no text column 'text'.*Available columns: sentence, label.*text_column="):
        load_data(None, "classification", train=train)
    with pytest.raises(DataError, match=r"no label column 'category'.*sentence, label"):
        load_data(None, "classification", train=train, text_column="sentence", label_column="category")


def test_validation_label_unseen_in_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(10))
    val = write_csv(tmp_path / "val.csv", [{"text": "meh", "label": "neutral"}, {"text": "ok", "label": "pos"}])
    with pytest.raises(DataError, match=r"validation split .*val\.csv.*'neutral'.*train \(2 labels: neg, pos\)"):
        load_data(None, "classification", train=train, validation=val)


def test_unseen_tag_in_test(tmp_path):
    train = write_conll(tmp_path / "train.txt", [[("a", "O"), ("B", "B-PER")]] * 3)
    test = write_conll(tmp_path / "test.txt", [[("c", "B-LOC")]])
    with pytest.raises(DataError, match="test split.*'B-LOC'"):
        load_data(None, "token-classification", train=train, test=test)


def test_empty_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(6))
    header_only = tmp_path / "validation.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match=r"validation split is empty.*validation\.csv"):
        load_data(None, "classification", train=train, validation=header_only)
    empty_file = tmp_path / "test.csv"
    empty_file.write_text("")
    with pytest.raises(DataError, match=r"test split is empty.*test\.csv is an empty file"):
        load_data(None, "classification", train=train, test=empty_file)


def test_non_text_in_text_column(tmp_path):
    numbers = write_csv(tmp_path / "n.csv", [{"text": 1, "label": "a"}, {"text": 2, "label": "b"}])
    with pytest.raises(DataError, match="text column 'text'.*non-text values"):
        load_data(None, "classification", train=numbers)
    nulls = write_jsonl(tmp_path / "null.jsonl", [{"text": "fine", "label": "a"}, {"text": None, "label": "b"}])
    with pytest.raises(DataError, match="non-text values: row 1 is empty"):
        load_data(None, "classification", train=nulls)
    lists = write_jsonl(tmp_path / "l.jsonl", [{"prompt": ["a"], "response": "x"}] * 2)
    with pytest.raises(DataError, match="prompt column 'prompt'.*non-text"):
        load_data(None, "causal-lm", train=lists)


def test_unreadable_files_are_named(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        load_data(None, "classification", train=missing)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label\n')
    with pytest.raises(DataError, match=r"Cannot read the train file .*broken\.jsonl as JSON"):
        load_data(None, "classification", train=broken)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"text,label\n\xff\xfe\x00\x81bad,\x80\n")
    with pytest.raises(DataError, match=r"binary\.csv"):
        load_data(None, "classification", train=binary)
    odd = tmp_path / "train.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_data(None, "classification", train=odd)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data("./no/such/dir", "classification")


def test_conll_errors(tmp_path):
    no_tag = tmp_path / "train.txt"
    no_tag.write_text("EU B-ORG\nrejects\n\n")
    with pytest.raises(DataError, match=r"line 2 \('rejects'\) holds no tag"):
        load_data(None, "token-classification", train=no_tag)
    first_untagged = tmp_path / "first.txt"
    first_untagged.write_text("-DOCSTART- O\n\nEU\n")
    with pytest.raises(DataError, match="holds no tag"):
        load_data(None, "token-classification", train=first_untagged)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("EU NNP B-ORG\nrejects B-VP O\n\nPeter B-PER\n")
    with pytest.raises(DataError, match=r"line 4 \('Peter B-PER'\) has 2 columns where the first token line has 3"):
        load_data(None, "token-classification", train=ragged)
    conll = write_conll(tmp_path / "ok.txt", [[("a", "O")]] * 3)
    with pytest.raises(DataError, match="only the token-classification task"):
        load_data(None, "classification", train=conll)


def test_tokens_and_tags_must_align(tmp_path):
    rows = [{"tokens": ["a", "b"], "tags": ["O"]}, {"tokens": ["c"], "tags": ["O"]}]
    with pytest.raises(DataError, match="row 0 has 2 tokens but 1 tags"):
        load_data(None, "token-classification", train=write_jsonl(tmp_path / "t.jsonl", rows), validation_fraction=0.5)


def test_other_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="No data given"):
        load_data(None, "classification")
    with pytest.raises(ValueError, match="Unknown task"):
        load_data("demo", "regression")
    with pytest.raises(DataError, match="validation_fraction"):
        load_data("demo", "classification", validation_fraction=1.5)
    one = write_csv(tmp_path / "one.csv", sentiment_rows(1))
    with pytest.raises(DataError, match="too few to carve a validation split"):
        load_data(None, "classification", train=one)
    floats = write_csv(tmp_path / "f.csv", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}])
    with pytest.raises(DataError, match="regression is not supported"):
        load_data(None, "classification", train=floats)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="has no training file"):
        load_data(tmp_path / "emptydir", "classification")


# --------------------------------------------------------------------------- hub ids


def test_hub_dataset_keeps_class_label_and_maps_split_names(monkeypatch):
    features = {"sentence": "string", "label": ClassLabel(names=["negative", "positive"])}

    def fake_load_dataset(name, config=None, **kwargs):
        assert (name, config) == ("org/sst", "default")
        make = lambda labels: Dataset.from_dict(  # noqa: E731
            {"sentence": [f"s{i}" for i in range(len(labels))], "label": labels},
        ).cast_column("label", features["label"])
        return DatasetDict({"train": make([0, 1] * 5), "dev": make([1, 0]), "test": make([-1, -1])})

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.warns(UserWarning, match="unlabelled"):
        data = load_data("org/sst:default", "classification", text_column="sentence")
    assert list(data) == ["train", "validation"]
    assert label_names(data, "classification") == ["negative", "positive"]
    assert data["validation"]["label"] == [1, 0]


def test_hub_failure_says_what_was_tried(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"'someone/missing'.*not a local file or directory.*ConnectionError: offline"):
        load_data("someone/missing", "classification")


# --------------------------------------------------------------------------- data directory


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path / "missing"))
    with pytest.warns(UserWarning, match="not a directory"):
        assert default_data_dir() is None
    monkeypatch.delenv("PEFTKIT_DATA_DIR")
    project = tmp_path / "work" / "project"
    (project / "peftkit").mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(pdata, "__file__", str(project / "peftkit" / "data.py"))
    assert default_data_dir() is None
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == (tmp_path / "work" / "shared" / "data").resolve()
    monkeypatch.chdir(tmp_path)  # from elsewhere: found relative to the repository
    assert default_data_dir() == (tmp_path / "work" / "shared" / "data").resolve()


# --------------------------------------------------------------------------- real datasets


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.mark.data
def test_real_sst2(data_dir: Path):
    data = load_data(data_dir / "sst2", "classification", text_column="sentence")
    assert {s: len(d) for s, d in data.items()} == {"train": 60614, "validation": 6735, "test": 872}
    assert label_names(data, "classification") == ["0", "1"]


@pytest.mark.data
def test_real_banking77(data_dir: Path):
    data = load_data(data_dir / "banking77", "classification", label_column="category", max_eval_samples=500)
    names = label_names(data, "classification")
    assert len(names) == 77 and "card_arrival" in names
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (10003 - 1000, 500, 500)
    assert any("," in text for text in data["train"]["text"])  # quoted commas survive


@pytest.mark.data
def test_real_conll2003(data_dir: Path):
    data = load_data(data_dir / "conll2003", "token-classification")
    assert {s: len(d) for s, d in data.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    names = label_names(data, "token-classification")
    assert names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert not any(sentence[0] == "-DOCSTART-" for sentence in data["test"]["tokens"])


def test_checkpoint_label_ids_match_names_then_indices():
    from peftkit.data import checkpoint_label_ids

    assert checkpoint_label_ids(["pos", "neg"], ["neg", "pos"]) == ([1, 0], [])  # another order
    assert checkpoint_label_ids(["0", "1"], ["negative", "positive"]) == ([0, 1], [])  # SST-2's ids as indices
    assert checkpoint_label_ids(["pos", "7", "x"], ["neg", "pos"]) == ([1, -1, -1], ["7", "x"])
