"""The task layer (issue 17): a task registered from outside peftkit works end to end; sentence
pairs; multi-label classification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Features, Value
from helpers_data import load_minilm_tokenizer, write_csv
from test_tasks import one_thread  # noqa: F401 - a fixture

from peftkit.data import DataError, label_names, load_data
from peftkit.prediction import predict_texts
from peftkit.tasks import TASKS, PadCollator, Task, get_task
from peftkit.tasks.base import model_inputs, pad_token_id, tokenized
from peftkit.tasks.multi_label import MultiHotCollator, multilabel_scores


@pytest.fixture(scope="module")
def tokenizer():
    return load_minilm_tokenizer()


def tiny_bert(task: str, vocab_size: int, **config):
    """A 1-layer, 32-wide BERT for ``task`` (its Auto class and config keys come from the task)."""
    from transformers import BertConfig

    from peftkit.introspect import auto_class
    from peftkit.tasks import task_class

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, **task_class(task).model_config, **config)
    return auto_class(task).from_config(cfg)


def train_briefly(model, tokenizer, data, task, tmp_path, steps: int = 4):
    import peftkit
    from peftkit.training import TrainConfig

    model = peftkit.wrap(model, "lora", task=task if isinstance(task, str) else task.name)
    config = TrainConfig(output_dir=str(tmp_path / "out"), max_steps=steps, batch_size=8, lr=5e-3, log_every=1,
                         progress=False, eval_steps=steps, save_total_limit=1, sample_generations=0, max_length=32)
    return peftkit.train(model, tokenizer, data, config, task=task), model


# --------------------------------------------------------------------------- a task from outside peftkit


class ToyRegressionTask(Task):
    """Text → a number (mean squared error): a task peftkit does not ship, defined in this file only."""

    name = "toy-regression"
    main_metric = "mse"
    greater_is_better = False
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    model_config = {"num_labels": 1, "problem_type": "regression"}
    columns = {"text": "text", "score": "score"}
    bench_metrics = ("mse",)

    def canonicalize(self, raw, origin, columns, options):
        features = Features({"text": Value("string"), "score": Value("float32")})
        return {s: ds.map(lambda row: {"text": row[columns["text"]], "score": float(row[columns["score"]])},
                          remove_columns=ds.column_names, features=features) for s, ds in raw.items()}

    def prepare(self, data, tokenizer, max_length=128):
        return tokenized(data, lambda b: {**tokenizer(b["text"], truncation=True, max_length=max_length), "labels": b["score"]},
                         "toy: tokenizing")

    def collator(self, tokenizer):
        pad = PadCollator(pad_token_id(tokenizer))

        def collate(rows):
            labels = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
            return {**pad([{k: v for k, v in r.items() if k != "labels"} for r in rows]), "labels": labels}

        return collate

    def eval_step(self, model, batch):
        predicted = model(**model_inputs(model, batch)).logits.float().squeeze(-1)
        return {"squared_error": (predicted - batch["labels"].to(predicted.device)) ** 2}

    def compute_metrics(self, gathered):
        return {"mse": float(np.mean(gathered["squared_error"]))}

    def predict(self, model, tokenizer, inputs, **_):
        enc = tokenizer(list(inputs), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return [{"score": float(v)} for v in model(**enc).logits.float().squeeze(-1)]


TASKS.pop(ToyRegressionTask.name)  # defining it registered it; the fixture below keeps it to the test that uses it


@pytest.fixture
def toy_task():
    """The toy task, registered (as the class did when this module was imported) for one test only."""
    TASKS[ToyRegressionTask.name] = ToyRegressionTask
    yield ToyRegressionTask
    TASKS.pop(ToyRegressionTask.name, None)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_task_registered_outside_peftkit_loads_trains_evaluates_and_predicts(tokenizer, tmp_path, toy_task):
    from peftkit.introspect import check_task

    assert TASKS["toy-regression"] is ToyRegressionTask and check_task("toy-regression") == "toy-regression"
    rows = [{"sentence": f"{'good ' * (i % 4)}item {i}", "target": float(i % 4)} for i in range(40)]
    write_csv(tmp_path / "train.csv", rows)
    data = load_data(None, "toy-regression", train=tmp_path / "train.csv", text_column="sentence", score_column="target")
    assert data["train"].column_names == ["text", "score"] and len(data["validation"]) == 4
    assert label_names(data, "toy-regression") is None
    model = tiny_bert("toy-regression", tokenizer.vocab_size)
    result, model = train_briefly(model, tokenizer, data, "toy-regression", tmp_path)
    assert set(result.metrics) >= {"mse"} and np.isfinite(result.metrics["mse"])
    out = predict_texts(model.eval(), tokenizer, "toy-regression", ["good good item", "item"])
    assert [set(r) for r in out] == [{"score"}, {"score"}]


def test_export_asks_a_task_registered_outside_peftkit(tokenizer, tmp_path, toy_task, monkeypatch):
    """The toy task sets none of the export attributes: a merged export is served with from_pretrained
    (no pipeline), --eval is refused (no single-label accuracy), and an onnx_refusal is honoured."""
    import peftkit
    from peftkit.export import ExportRefused, export

    tiny_bert("toy-regression", tokenizer.vocab_size).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = peftkit.wrap(peftkit.load_model(str(tmp_path / "base"), task="toy-regression")[0], "lora", task="toy-regression", r=4)
    peftkit.save(model, tmp_path / "ckpt", tokenizer=tokenizer)
    report = export(tmp_path / "ckpt", tmp_path / "merged")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-5
    assert report.serve == [f"transformers.BertForSequenceClassification.from_pretrained({str(tmp_path / 'merged')!r})"]
    with pytest.raises(ExportRefused, match="single-label classifiers; this checkpoint is toy-regression.*mse"):
        export(tmp_path / "ckpt", tmp_path / "eval", eval_file=tmp_path / "any.csv")
    monkeypatch.setattr(toy_task, "onnx_refusal", "(a toy) has no graph; use --format merged")
    with pytest.raises(ExportRefused, match=r"ONNX export covers classification.* models; toy-regression \(a toy\) has no graph"):
        export(tmp_path / "ckpt", tmp_path / "onnx", format="onnx")


def test_a_task_registered_outside_peftkit_is_served(tokenizer, tmp_path, toy_task):
    """The toy task's adapter behind `peftkit serve` (in process): /v1/predict answers what the task's own
    predict gives for the reloaded checkpoint."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    import peftkit
    from peftkit.serve.app import create_app
    from peftkit.serve.registry import Registry

    tiny_bert("toy-regression", tokenizer.vocab_size).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = peftkit.wrap(peftkit.load_model(str(tmp_path / "base"), task="toy-regression")[0], "lora", task="toy-regression", r=4)
    peftkit.save(model, tmp_path / "ckpt", tokenizer=tokenizer)
    texts = ["good good item", "item"]
    expected = predict_texts(peftkit.load(tmp_path / "ckpt").eval(), tokenizer, "toy-regression", texts)
    registry = Registry(device="cpu")
    registry.load("toy", tmp_path / "ckpt")
    with TestClient(create_app(registry, max_batch_size=8, max_wait_ms=50)) as client:
        r = client.post("/v1/predict", json={"adapter": "toy", "inputs": texts})
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]
    assert [set(p) for p in served] == [{"score"}, {"score"}]
    assert [p["score"] for p in served] == pytest.approx([p["score"] for p in expected], abs=1e-5)


def test_load_options_follow_the_task(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "other": "x"} for i in range(10)]
    write_csv(tmp_path / "train.csv", rows)
    # Another task's option at its default is ignored (the CLI passes them all); set, it is refused.
    load_data(None, "classification", train=tmp_path / "train.csv", tags_column="tags", prompt_column="prompt")
    with pytest.raises(DataError, match="tags_column='other' applies to the token-classification task"):
        load_data(None, "classification", train=tmp_path / "train.csv", tags_column="other")
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour_column'.*text_column, text_pair_column"):
        load_data(None, "classification", train=tmp_path / "train.csv", colour_column="x")


# --------------------------------------------------------------------------- sentence pairs


def pair_rows(n: int):
    return [{"q1": f"how do i {w} my card", "q2": f"{w} card please", "same": ["no", "yes"][i % 2]}
            for i, w in zip(range(n), ["top up", "freeze", "cancel", "activate"] * n, strict=False)]


def test_pairs_load_and_tokenize_as_pairs(tokenizer, tmp_path):
    write_csv(tmp_path / "train.csv", pair_rows(20))
    data = load_data(None, "classification", train=tmp_path / "train.csv", text_column="q1", text_pair_column="q2",
                     label_column="same")
    assert data["train"].column_names == ["text", "text_pair", "label"]
    prepared = get_task("classification").prepare(data, tokenizer, max_length=32)["train"]
    row = prepared[0]
    # [CLS] a [SEP] b [SEP]: the second segment is typed 1, and both texts are there
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2 and set(row["token_type_ids"]) == {0, 1}
    decoded = tokenizer.decode(row["input_ids"], skip_special_tokens=True)
    assert data["train"][0]["text"] in decoded and data["train"][0]["text_pair"] in decoded
    with pytest.raises(DataError, match="no text pair column 'nope'.*text_pair_column="):
        load_data(None, "classification", train=tmp_path / "train.csv", text_column="q1", text_pair_column="nope",
                  label_column="same")


def test_pair_predictions_match_the_training_layout(tokenizer):
    model = tiny_bert("classification", tokenizer.vocab_size, num_labels=2).eval()
    task = get_task("classification")
    assert task.parse_input(["a", "b"]) == task.parse_input({"text": "a", "text_pair": "b"}) == {"text": "a", "text_pair": "b"}
    assert task.parse_input({"text": "a"}) == "a"
    with pytest.raises(ValueError, match="list of two strings"):
        task.parse_input(["a", "b", "c"])
    rows = predict_texts(model, tokenizer, "classification", [["how do i freeze it", "freeze card"], "plain text"])
    enc = tokenizer("how do i freeze it", "freeze card", return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.softmax(-1)[0]
    assert rows[0]["scores"]["LABEL_1"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert set(rows[1]) == {"label", "score", "scores"}


# --------------------------------------------------------------------------- multi-label


def test_multilabel_scores_by_hand():
    pred = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    true = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    scores = multilabel_scores(pred, true)
    # pooled: tp=2, fp=1, fn=1 -> 4/6; label 0: F1 1, label 1: tp 0 -> 0, label 2 never seen (left out)
    assert scores == pytest.approx({"micro_f1": 4 / 6, "macro_f1": 0.5, "subset_accuracy": 1 / 3})


def multilabel_files(tmp_path):
    labels = [["card"], ["card", "refund"], ["refund"], [], ["card", "fees"], ["fees"]] * 4
    rows = [{"text": f"message {i} " + " ".join(ls), "labels": ls} for i, ls in enumerate(labels)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_csv(tmp_path / "train.csv", [{"text": r["text"], "labels": "|".join(r["labels"])} for r in rows])
    return rows


def test_multilabel_loads_lists_and_delimited_strings(tmp_path):
    rows = multilabel_files(tmp_path)
    listed = load_data(None, "multi-label-classification", train=tmp_path / "train.jsonl", validation=tmp_path / "train.jsonl",
                       label_column="labels")
    split = load_data(None, "multi-label-classification", train=tmp_path / "train.csv", validation=tmp_path / "train.csv",
                      label_column="labels", label_separator="|")
    assert label_names(listed, "multi-label-classification") == label_names(split, "multi-label-classification") == ["card", "fees", "refund"]
    assert listed["train"]["label"] == split["train"]["label"]
    assert listed["train"][1]["label"] == [0, 2] and listed["train"][3]["label"] == []
    assert len(listed["train"]) == len(rows)
    with pytest.raises(DataError, match="holds strings: pass label_separator="):
        load_data(None, "multi-label-classification", train=tmp_path / "train.csv", label_column="labels")


def test_multilabel_collates_multi_hot_and_scores_with_a_sigmoid(tokenizer, tmp_path):
    multilabel_files(tmp_path)
    data = load_data(None, "multi-label-classification", train=tmp_path / "train.jsonl", validation=tmp_path / "train.jsonl",
                     label_column="labels")
    task = get_task("multi-label-classification")
    prepared = task.prepare(data, tokenizer, max_length=16)["train"]
    batch = task.collator(tokenizer)([prepared[i] for i in range(4)])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0]]
    assert isinstance(task.collator(tokenizer), MultiHotCollator)
    model = tiny_bert("multi-label-classification", tokenizer.vocab_size, num_labels=3).eval()
    assert model.config.problem_type == "multi_label_classification"
    with torch.no_grad():
        out = task.eval_step(model, batch)
    assert out["predictions"].shape == (4, 3) and set(out["predictions"].flatten().tolist()) <= {0, 1}
    metrics = task.compute_metrics({k: v.numpy() for k, v in out.items()})
    assert set(metrics) == {"micro_f1", "macro_f1", "subset_accuracy", "eval_loss"}
    assert task.chance_loss(prepared) == pytest.approx(np.mean([-(p * np.log(p) + (1 - p) * np.log(1 - p)) for p in (0.5, 1 / 3, 1 / 3)]))


def test_multilabel_predicts_the_labels_above_the_threshold(tokenizer):
    model = tiny_bert("multi-label-classification", tokenizer.vocab_size, num_labels=3,
                      id2label={0: "card", 1: "fees", 2: "refund"}, label2id={"card": 0, "fees": 1, "refund": 2}).eval()
    with torch.no_grad():  # make the head say: card yes, fees no, refund yes
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([2.0, -2.0, 0.5]))
    rows = predict_texts(model, tokenizer, "multi-label-classification", ["my card was charged twice"])
    assert rows[0]["labels"] == ["card", "refund"] and rows[0]["scores"]["fees"] < 0.5
    strict = get_task("multi-label-classification", threshold=0.7)
    assert predict_texts(model, tokenizer, strict, ["x"])[0]["labels"] == ["card"]
    from peftkit.introspect import infer_task

    assert infer_task(model) == "multi-label-classification"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_multilabel_trains_and_evaluates(tokenizer, tmp_path):
    multilabel_files(tmp_path)
    data = load_data(None, "multi-label-classification", train=tmp_path / "train.jsonl", validation=tmp_path / "train.jsonl",
                     label_column="labels")
    model = tiny_bert("multi-label-classification", tokenizer.vocab_size, num_labels=3)
    result, _ = train_briefly(model, tokenizer, data, "multi-label-classification", tmp_path)
    assert {"micro_f1", "macro_f1", "eval_loss"} <= set(result.metrics)


# --------------------------------------------------------------------------- the banking77 paraphrase data


def test_banking77_pairs_are_seeded_balanced_and_split_by_message(tmp_path):
    import csv
    import importlib.util
    from pathlib import Path

    from helpers_data import shared_data_dir

    source = shared_data_dir() / "banking77"
    spec = importlib.util.spec_from_file_location("make_pairs", Path(__file__).resolve().parents[1] / "benchmarks" / "make_banking77_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first = module.make_pairs(source, tmp_path / "a", seed=3, train_pairs=400, test_pairs=100)
    again = module.make_pairs(source, tmp_path / "b", seed=3, train_pairs=400, test_pairs=100)
    assert first["train"].read_text() == again["train"].read_text()
    rows = {split: list(csv.DictReader(path.open())) for split, path in first.items()}
    assert [len(rows["train"]), len(rows["test"])] == [400, 100]
    assert sum(r["label"] == "same" for r in rows["train"]) == 200 and sum(r["label"] == "same" for r in rows["test"]) == 50
    messages = {split: {module.key(r[c]) for r in rs for c in ("text", "text_pair")} for split, rs in rows.items()}
    assert not messages["train"] & messages["test"]
    data = load_data(None, "classification", train=first["train"], test=first["test"], text_pair_column="text_pair")
    assert label_names(data, "classification") == ["different", "same"] and "text_pair" in data["test"].column_names


# --------------------------------------------------------------------------- the CLI asks the task


def _checkpoint(tmp_path, task: str, labels) -> str:
    from helpers_training import minilm_path, save_tiny_model

    import peftkit
    from peftkit.introspect import auto_class
    from peftkit.tasks import task_class

    if minilm_path() is None:
        pytest.skip("the packaged MiniLM tokenizer is needed")
    base = save_tiny_model(tmp_path / f"base-{task}", labels=labels, dropout=0.0)
    model = auto_class(task).from_pretrained(base, **task_class(task).model_config)
    out = tmp_path / f"ckpt-{task}"
    peftkit.save(peftkit.wrap(model, "lora", task=task, r=4), out)
    return str(out)


def _cli_json(capsys, argv) -> list[dict]:
    from peftkit.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    if argv[0] == "eval":  # one indented JSON object
        return [json.loads(out[out.index("{") : out.rindex("}") + 1])]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_cli_predicts_and_scores_sentence_pairs(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "classification", ("different", "same"))
    rows = _cli_json(capsys, ["predict", ckpt, "--text", "how do i top up", "--text-pair", "add money", "--text", "hi",
                              "--text-pair", "hello"])
    assert [set(r) for r in rows] == [{"text", "text_pair", "label", "score"}] * 2 and rows[0]["text_pair"] == "add money"
    write_csv(tmp_path / "pairs.csv", [{"q1": r["q1"], "q2": r["q2"], "same": ["different", "same"][i % 2]}
                                       for i, r in enumerate(pair_rows(12))])
    jsonl = _cli_json(capsys, ["predict", ckpt, "--file", str(tmp_path / "pairs.csv"), "--text-column", "q1",
                               "--text-pair-column", "q2"])
    assert len(jsonl) == 12 and jsonl[0]["text_pair"] == "top up card please"
    metrics = _cli_json(capsys, ["eval", ckpt, "--test", str(tmp_path / "pairs.csv"), "--text-column", "q1",
                                 "--text-pair-column", "q2", "--label-column", "same", "--batch-size", "4"])[0]
    assert metrics["n_examples"] == 12 and 0 <= metrics["accuracy"] <= 1


def test_cli_predicts_and_scores_multi_label(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "multi-label-classification", ("card", "fees", "refund"))
    rows = _cli_json(capsys, ["predict", ckpt, "--text", "my card was charged twice"])
    assert set(rows[0]) == {"text", "labels"} and set(rows[0]["labels"]) <= {"card", "fees", "refund"}
    multilabel_files(tmp_path)
    metrics = _cli_json(capsys, ["eval", ckpt, "--test", str(tmp_path / "train.csv"), "--label-column", "labels",
                                 "--label-separator", "|", "--batch-size", "8"])[0]
    assert {"micro_f1", "macro_f1", "subset_accuracy", "n_examples"} <= set(metrics)


def test_the_cli_reads_the_same_tasks_as_the_registry():
    """`peftkit --help` lists tasks and their data flags from peftkit/tasks' source (no torch): the
    same names, columns and options as the imported registry; the bench suite's tasks too."""
    from peftkit.bench.suite import METRICS
    from peftkit.cli import load_option_catalog
    from peftkit.data import all_load_options
    from peftkit.static import task_catalog

    built_in = {name: cls for name, cls in TASKS.items() if cls.__module__.startswith("peftkit.")}
    catalog = task_catalog()
    assert list(catalog) == list(built_in)
    for name, cls in built_in.items():
        assert (catalog[name].get("columns", {}), catalog[name].get("options", {})) == (cls.columns, cls.options)
        assert METRICS.get(name, ()) == cls.bench_metrics
    assert {k: v for k, (v, _) in load_option_catalog().items()} == all_load_options()


# --------------------------------------------------------------------------- every task through the benchmark runner


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_task_benchmarks_through_the_suite_runner(tmp_path, monkeypatch):
    """Sentence pairs, multi-label and token classification (tiny BERT) and seq2seq (tiny T5) each run as a
    benchmark cell through the same runner, in their own processes, scored with their own main metric."""
    import yaml
    from helpers_bench import sentiment_rows, write_tiny_bert
    from helpers_loading import tiny_model_dir
    from test_seq2seq import eos_tokenizer, swap_rows

    from peftkit.bench.runner import run_suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    data.mkdir()
    reviews = sentiment_rows(48, 0)
    write_csv(data / "pairs.csv", [{"a": r["text"], "b": s["text"], "same": "yes" if r["label"] == s["label"] else "no"}
                                   for r, s in zip(reviews, reviews[1:] + reviews[:1], strict=True)])
    multilabel_files(data)
    (data / "ner.txt").write_text("".join(f"{w} {'B-POS' if w in ('good', 'great') else 'O'}\n" + ("\n" if i % 4 == 3 else "")
                                          for i, w in enumerate("the good film was great and the plot dull".split() * 6)))
    (data / "swap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in swap_rows()))
    bert = write_tiny_bert(tmp_path / "bert")
    t5 = tiny_model_dir(tmp_path, "t5", "seq2seq-lm", pad_token=True)
    eos_tokenizer().save_pretrained(t5)

    def suite(name, model, tasks):
        spec = {"name": name, "model": {"path": str(model)}, "data_dir": str(data), "device": "cpu",
                "budget": {"max_steps": 2, "batch_size": 4, "eval_batch_size": 8},
                "tasks": tasks, "strategies": [{"name": "lora", "strategy": "lora", "options": {"r": 2}}]}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    encoder = suite("tasks-bert", bert, [
        {"name": "pairs", "task": "classification", "train": "pairs.csv", "test": "pairs.csv", "max_length": 48,
         "columns": {"text_column": "a", "text_pair_column": "b", "label_column": "same"}},
        {"name": "multi", "task": "multi-label-classification", "train": "train.jsonl", "test": "train.jsonl",
         "columns": {"label_column": "labels"}, "max_length": 16},
        {"name": "ner", "task": "token-classification", "train": "ner.txt", "test": "ner.txt", "max_length": 16},
    ])
    generator = suite("tasks-t5", t5, [{"name": "swap", "task": "seq2seq-lm", "train": "swap.jsonl", "test": "swap.jsonl",
                                        "test_size": 8, "max_length": 16, "max_new_tokens": 4,
                                        "columns": {"prompt_column": "source", "response_column": "target"}}])
    rows = {}
    for path in (encoder, generator):
        out = run_suite(path, tmp_path / path.stem, progress=False, report=False)
        rows.update({r["task"]: r for r in json.loads((out / "results.json").read_text())["rows"]})
    assert {t: (r["status"], r["metric_name"]) for t, r in rows.items()} == {
        "pairs": ("ok", "accuracy"), "multi": ("ok", "micro_f1"), "ner": ("ok", "f1"), "swap": ("ok", "rougeL")}, \
        {t: r.get("error") for t, r in rows.items()}
    assert all(0.0 <= float(r["metric_value"]) <= 1.0 for r in rows.values())
