"""``peftkit serve``: many adapters on one base model over HTTP (FastAPI + uvicorn).

    peftkit serve --model BASE --adapter sentiment=runs/sst2/best --adapter intent=runs/b77/best
    peftkit serve runs/sst2/best            # one checkpoint, its base model from the checkpoint

Modules: `registry` (loading adapters: LoRA-family ones share one PEFT model per base and head
shape, others get their own model), `batching` (dynamic batches across adapters), `schemas`
(request bodies), `auth` (bearer key, body-size limit), `app` (the FastAPI app and `run`).
This module stays light: ``peftkit --help`` imports it without torch or fastapi.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

DEFAULTS = {
    "host": "127.0.0.1", "port": 8000, "max_batch_size": 32, "max_wait_ms": 5.0, "max_body_bytes": 1 << 20,
    "max_inputs": 64, "max_text_chars": 8192, "max_new_tokens": 256,
}


def setup_serve_parser(p: argparse.ArgumentParser) -> Callable:
    """The flags of ``peftkit serve``; returns its handler."""
    p.add_argument("checkpoint", nargs="*", metavar="[NAME=]CHECKPOINT",
                   help="checkpoint(s) to serve; the name defaults to the folder's (its parent's for best/final)")
    p.add_argument("--config", help="YAML file of options (keys = flag names); flags override it")
    p.add_argument("--model", help="base model path or hub id (default: the base each checkpoint names)")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH", help="an adapter to serve (repeatable)")
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load the base model(s) quantized (bitsandbytes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where models run (default: auto, a GPU if torch sees one)")
    p.add_argument("--host", default=DEFAULTS["host"], help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULTS["port"], help="port to listen on (default: 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $PEFTKIT_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS["max_batch_size"],
                   help="most inputs gathered into one forward pass (1 turns batching off; default 32)")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"],
                   help="longest a request waits for others to batch with (default 5)")
    p.add_argument("--adapter-dir", help="allow POST /v1/adapters to load checkpoints from under this directory")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], help="request body limit (default 1 MiB)")
    p.add_argument("--max-inputs", type=int, default=DEFAULTS["max_inputs"], help="inputs per request (default 64)")
    p.add_argument("--max-text-chars", type=int, default=DEFAULTS["max_text_chars"], help="characters per input (default 8192)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"],
                   help="largest max_new_tokens / max_tokens a request may ask for (default 256)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level (default: info: one line per request)")
    return cmd_serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import run

    return run(args)
