"""Input validation (issue 13): strategy options by name, type and range; single-label training
data and blank texts; max_length against the model's position limit."""

from __future__ import annotations

import warnings

import pytest
import yaml
from conftest import build_tiny, tiny_config
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from helpers_data import load_minilm_tokenizer, write_csv, write_jsonl
from peft.tuners.tuners_utils import BaseTunerLayer

import peftkit
from peftkit.data import DataError, load_data
from peftkit.introspect import NO_LIMIT, auto_class, fit_max_length, position_limit
from peftkit.strategies import REGISTRY, BottleneckAdapter
from peftkit.tasks import get_task

# --------------------------------------------------------------------------- strategy options


def test_every_option_of_every_strategy_has_a_rule_its_default_meets():
    for name, strategy in REGISTRY.items():
        assert set(strategy.option_rules) == set(strategy.options), name
        for option, default in strategy.options.items():
            assert strategy.option_rules[option].accepts(default), (name, option, default)


# (strategy, options, what the message must say). Every message starts "<strategy> option <name>=<value>:".
REFUSED = [
    ("lora", {"r": 0}, r"lora option r=0: must be an integer >= 1 \(e\.g\. r=8\)"),
    ("lora", {"r": "8"}, r"lora option r='8': must be an integer >= 1, not a str \(e\.g\. r=8\)"),
    ("lora", {"r": 2.5}, r"lora option r=2\.5: must be an integer >= 1, not a float"),
    ("lora", {"r": True}, r"lora option r=True: must be an integer >= 1, not a bool"),
    ("lora", {"alpha": 0}, r"lora option alpha=0: must be a number > 0 \(e\.g\. alpha=16\)"),
    ("lora", {"alpha": "16"}, r"lora option alpha='16': must be a number > 0, not a str"),
    ("lora", {"dropout": 1.5}, r"lora option dropout=1\.5: must be a number in \[0, 1\) \(e\.g\. dropout=0\.05\)"),
    ("lora", {"dropout": -0.1}, r"lora option dropout=-0\.1: must be a number in \[0, 1\)"),
    ("lora", {"dropout": float("nan")}, r"lora option dropout=nan: must be a number in \[0, 1\)"),
    ("lora", {"target_modules": []}, r"lora option target_modules=\[\]: must be 'auto', 'all-linear', a list of module"),
    ("lora", {"target_modules": 5}, r"lora option target_modules=5: .*, not an int"),
    ("lora", {"target_modules": "(unclosed"}, r"lora option target_modules='\(unclosed': .*regular expression"),
    ("lora", {"use_dora": "true"}, r"lora option use_dora='true': must be True or False, not a str"),
    ("lora", {"use_rslora": 1}, r"lora option use_rslora=1: must be True or False, not an int"),
    ("lora", {"init": "foo"}, r"lora option init='foo': must be one of True, False, 'gaussian', .*'pissa_niter_<n>'"),
    ("lora", {"init": 8}, r"lora option init=8: must be one of True, False, .*, not an int"),
    ("lora", {"init": "loftq"}, r"lora option init='loftq' needs PEFT's loftq_config.*peft\.LoraConfig"),
    ("lora", {"init": "orthogonal", "r": 3}, r"lora option init='orthogonal' needs an even rank, got r=3"),
    ("lora", {"bias": "some"}, r"lora option bias='some': must be one of 'none', 'all', 'lora_only'"),
    ("lora", {"modules_to_save": "classifier"}, r"lora option modules_to_save='classifier': must be 'auto', a list"),
    ("adapter", {"reduction_factor": "16"}, r"adapter option reduction_factor='16': must be an integer >= 1, not a str"),
    ("adapter", {"placement": "middle"}, r"adapter option placement='middle': must be one of 'pfeiffer', 'houlsby'"),
    ("adapter", {"activation": "swishy"}, r"adapter option activation='swishy': must be one of .*'gelu'.*'relu'"),
    ("adapter", {"modules_to_save": 3}, r"adapter option modules_to_save=3: .*, not an int"),
    ("prompt", {"num_virtual_tokens": 0}, r"prompt option num_virtual_tokens=0: must be an integer >= 1 \(e\.g\. "
                                          r"num_virtual_tokens=20\)"),
    ("prefix", {"num_virtual_tokens": 0}, r"prefix option num_virtual_tokens=0: must be an integer >= 1"),
    ("prefix", {"prefix_projection": "no"}, r"prefix option prefix_projection='no': must be True or False"),
    ("ia3", {"target_modules": "key"}, r"ia3 option target_modules='key': must be 'auto' or a list of module names"),
    ("ia3", {"feedforward_modules": 3}, r"ia3 option feedforward_modules=3: .*, not an int"),
]


@pytest.mark.parametrize(("strategy", "options", "message"), REFUSED, ids=[f"{s}-{'-'.join(o)}" for s, o, _ in REFUSED])
def test_bad_option_is_refused_by_name_before_anything_is_built(strategy, options, message):
    model = build_tiny("gpt2", "causal-lm")
    with pytest.raises(ValueError, match=message):
        peftkit.wrap(model, strategy, **options)
    assert not any(isinstance(m, (BaseTunerLayer, BottleneckAdapter)) for m in model.modules())
    assert peftkit.wrap_info(model) is None


def test_good_values_pass_ints_standing_for_floats_included():
    lora = REGISTRY["lora"]
    resolved = lora.resolve_options({"alpha": 8, "dropout": 0, "r": 4, "target_modules": ("q", "v"), "init": "pissa_niter_4",
                                     "modules_to_save": None, "use_dora": True})
    assert (resolved["alpha"], resolved["dropout"], resolved["init"]) == (8, 0, "pissa_niter_4")
    assert lora.resolve_options({"target_modules": r".*\.(query|value)", "init": False, "bias": "lora_only"})["init"] is False
    assert REGISTRY["ia3"].resolve_options({"feedforward_modules": None})["feedforward_modules"] is None
    wrapped = peftkit.wrap(build_tiny("bert", "classification"), "lora", r=2, alpha=3.5, dropout=0)
    assert (wrapped.peft_config["default"].r, wrapped.peft_config["default"].lora_alpha) == (2, 3.5)


def test_yaml_values_arrive_typed_and_a_quoted_number_is_refused_by_name():
    """A config file's strategy_options pass through yaml.safe_load (as the CLI reads them)."""
    options = yaml.safe_load("r: 16\nalpha: 32\ndropout: 0\nuse_dora: true\ntarget_modules: [query, value]\ninit: gaussian\n")
    assert REGISTRY["lora"].resolve_options(options)["use_dora"] is True
    with pytest.raises(ValueError, match=r"lora option r='16': must be an integer >= 1, not a str"):
        REGISTRY["lora"].resolve_options(yaml.safe_load("r: '16'\n"))


# --------------------------------------------------------------------------- data: one label, blank texts


def test_single_label_training_file_is_refused_naming_file_and_column(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"review": f"fine film {i}", "stars": "pos"} for i in range(8)])
    with pytest.raises(DataError, match=r"train\.csv\) holds a single label: every row's 'stars' is 'pos'.*accuracy 1\.0.*"
                                        r"Add training rows with at least one other label.*label_column="):
        load_data(None, "classification", train=train, text_column="review", label_column="stars")


def test_single_tag_training_file_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 4)
    with pytest.raises(DataError, match=r"train\.jsonl\) holds a single tag: every tag in 'tags' is 'O'.*tags_column="):
        load_data(None, "token-classification", train=train)


def test_single_label_left_by_carving_or_subsetting_says_so(tmp_path):
    two = write_csv(tmp_path / "two.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    with pytest.raises(DataError, match=r"carving a validation split \(validation_fraction=0\.1\).*give a validation file"):
        load_data(None, "classification", train=two)
    with pytest.raises(DataError, match=r"max_train_samples=1 kept rows of one only: raise it"):
        load_data(None, "classification", train=two, validation=two, max_train_samples=1)


def test_prepare_refuses_a_single_label_dataset_built_by_hand():
    split = Dataset.from_dict({"text": ["a", "b"], "label": [1, 1]},
                              features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))
    with pytest.raises(DataError, match="the train split holds a single label: every row's 'label' is 'pos'"):
        get_task("classification").prepare(DatasetDict(train=split, validation=split), load_minilm_tokenizer())
    tags = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=["O", "B-PER"]))})
    ner = Dataset.from_dict({"tokens": [["a", "b"]], "tags": [[0, 0]]}, features=tags)
    with pytest.raises(DataError, match="single tag: every tag in 'tags' is 'O'"):
        get_task("token-classification").prepare(DatasetDict(train=ner), load_minilm_tokenizer())


def blank_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "whitespace-only" in str(w.message)]


def test_blank_texts_are_dropped_with_a_counted_warning(tmp_path):
    texts = ["  ", "", "good film", "bad film", "fine film", "\t\n"]
    rows = [{"text": texts[i % 6], "label": ["neg", "pos"][i % 2]} for i in range(12)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:6])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_data(None, "classification", train=train, validation=test, test=test)
    said = blank_warnings(record)
    assert any(m.startswith("the train split (") and "train.jsonl): 6 of 12 rows have an empty or whitespace-only 'text' "
               "(first: row 0); dropped them" in m for m in said)
    assert any("test.jsonl): 3 of 6 rows" in m for m in said)
    assert len(data["train"]) == 6 and len(data["test"]) == 3
    assert all(t.strip() for split in data.values() for t in split["text"])


def test_blank_responses_and_words_are_dropped_and_all_blank_is_an_error(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "2+2?", "response": " "}, {"prompt": "3+3?", "response": "6"}] * 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_data(None, "causal-lm", train=qa, validation=qa)
    assert any("3 of 6 rows have an empty or whitespace-only 'response'" in m for m in blank_warnings(record))
    assert set(data["train"]["response"]) == {"6"}

    ner = write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["Ann", " ", "left"], "tags": ["B-PER", "O", "O"]},
                                               {"tokens": [""], "tags": ["O"]}, {"tokens": ["Bo"], "tags": ["B-PER"]}])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_data(None, "token-classification", train=ner, validation=ner)
    assert any("2 word(s) in 2 row(s) of 'tokens' are empty or whitespace-only (first: row 0); dropped them with their "
               "tags, and the 1 row(s) left without words" in m for m in blank_warnings(record))
    names = data["train"].features["tags"].feature.names
    assert [[names[t] for t in row] for row in data["validation"]["tags"]] == [["B-PER", "O"], ["B-PER"]]
    assert data["validation"]["tokens"] == [["Ann", "left"], ["Bo"]]

    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": " ", "label": "a"}, {"text": "", "label": "b"}])
    with pytest.raises(DataError, match=r"blank\.jsonl\): every row \(2\) has an empty or whitespace-only 'text'"):
        load_data(None, "classification", train=blank)


# --------------------------------------------------------------------------- max_length against the position limit


def test_position_limit_read_off_the_config():
    assert position_limit(build_tiny("bert", "classification")) == (64, "config max_position_embeddings=64")
    assert position_limit(build_tiny("gpt2", "causal-lm"))[0] == 64  # n_positions
    assert position_limit(build_tiny("t5", "seq2seq-lm")) is None  # relative positions
    relative = auto_class("classification").from_config(tiny_config("deberta-v2", position_biased_input=False))
    assert position_limit(relative) is None
    limit, source = position_limit(build_tiny("roberta", "classification"))  # positions start at padding_idx + 1
    assert (limit, source) == (63, "config max_position_embeddings=64, less 1 (positions start after padding_idx 0)")
    prompt = peftkit.wrap(build_tiny("gpt2", "causal-lm"), "prompt", num_virtual_tokens=10)
    assert position_limit(prompt) == (54, "config max_position_embeddings=64, less 10 virtual tokens")


class Tokenizer:
    def __init__(self, model_max_length):
        self.model_max_length = model_max_length


def test_fit_max_length_clamps_with_a_warning_and_ignores_tokenizer_sentinels():
    bert = build_tiny("bert", "classification")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_max_length(bert, Tokenizer(int(1e30)), 64) == 64
        assert fit_max_length(bert, Tokenizer(NO_LIMIT), 32) == 32
        assert fit_max_length(build_tiny("t5", "seq2seq-lm"), Tokenizer(16), 512) == 512  # T5: no limit to clamp to
    with pytest.warns(UserWarning, match=r"max_length=128 is more than BertForSequenceClassification can read: 64 tokens "
                                         r"\(config max_position_embeddings=64\)\. Using max_length=64; pass max_length=64 "
                                         r"or less to silence this warning"):
        assert fit_max_length(bert, Tokenizer(int(1e30)), 128) == 64
    with pytest.warns(UserWarning, match=r"can read: 50 tokens \(the tokenizer's model_max_length=50; config"):
        assert fit_max_length(bert, Tokenizer(50), 128) == 50


def test_training_with_max_length_above_the_position_limit_clamps_and_runs(tmp_path):
    """Old behaviour: a tensor-size error at step 1 (positions 64.. do not exist)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from peftkit.training import TrainConfig, train

    tokenizer = load_minilm_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2))
    long = " ".join(["the film was good and the plot was fine"] * 12)  # ~100 tokens
    rows = [{"text": f"{long} {i}", "label": ["neg", "pos"][i % 2]} for i in range(12)]
    data = load_data(None, "classification", train=write_jsonl(tmp_path / "train.jsonl", rows),
                     validation=write_jsonl(tmp_path / "val.jsonl", rows[:4]))
    assert len(tokenizer(data["train"][0]["text"])["input_ids"]) > 64
    config = TrainConfig(output_dir=str(tmp_path / "out"), max_steps=2, batch_size=4, max_length=128, device="cpu",
                         progress=False, lr=1e-3)
    with pytest.warns(UserWarning, match=r"max_length=128 is more than BertForSequenceClassification can read: 64 tokens"):
        result = train(peftkit.wrap(model, "lora", r=2), tokenizer, data, config)
    assert config.max_length == 128  # the caller's config is left as given; the run records what it used
    record = yaml.safe_load((tmp_path / "out" / "run_config.yaml").read_text())
    assert record["train"]["max_length"] == 64
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.history  # trained, then evaluated
