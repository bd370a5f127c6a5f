"""The perturbed-test-set generator (peftkit.noise) and `peftkit perturb`."""

from __future__ import annotations

import json
import random

import pytest


def test_noise_is_seeded_and_near_its_rate():
    from peftkit.noise import perturb_text, perturb_texts

    rng = random.Random(0)
    texts = [
        " ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(12)) for _ in range(200)
    ]
    assert perturb_texts(texts, seed=3) == perturb_texts(texts, seed=3)
    assert perturb_texts(texts, seed=3) != perturb_texts(texts, seed=4)
    assert (
        perturb_texts(texts[5:9], seed=3) != perturb_texts(texts, seed=3)[5:9]
    )  # each row's noise: (seed, index)
    assert perturb_text(texts[7], seed=3, index=7) == perturb_texts(texts, seed=3)[7]
    assert perturb_texts(texts, rate=0.0) == texts
    for rate in (0.05, 0.2):
        chars = perturb_texts(texts, kind="char", rate=rate)
        changed = sum(
            sum(a != b for a, b in zip(t, n, strict=False)) > 0 for t, n in zip(texts, chars, strict=True)
        )
        assert changed >= 0.9 * len(texts) * (1 - (1 - rate) ** 72)  # 72 letters each
        lost = 1 - sum(len(n) for n in chars) / sum(len(t) for t in texts)
        assert (
            rate / 3 * 0.6 < lost * 83 / 72 < rate / 3 * 1.4
        )  # a third of the hits on the 72 letters drop one
        words = perturb_texts(texts, kind="word", rate=rate)
        dropped = 1 - sum(len(w.split()) for w in words) / (12 * len(texts))
        assert rate / 2 * 0.6 < dropped < rate / 2 * 1.4  # half of the hits drop a word
        assert all(
            sorted(w.split()) != sorted(t.split()) or w != t
            for t, w in zip(texts, words, strict=True)
            if w != t
        )
    with pytest.raises(ValueError, match="noise kind"):
        perturb_text("x", kind="emoji")
    with pytest.raises(ValueError, match="noise rate"):
        perturb_text("x", rate=2)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_perturb_command_writes_a_noisy_copy(tmp_path, suffix):
    from peftkit.cli import main

    rows = [
        {"sentence": f'a "quoted" movie , number {i} was really quite good', "label": str(i % 2)}
        for i in range(20)
    ]
    source = tmp_path / f"test{suffix}"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        source.write_text(
            "sentence"
            + sep
            + "label\n"
            + "".join(
                (r["sentence"] if sep == "\t" else json.dumps(r["sentence"]).replace('\\"', '""'))
                + sep
                + r["label"]
                + "\n"
                for r in rows
            )
        )
    target = tmp_path / f"noisy{suffix}"
    args = ["perturb", str(source), str(target), "--text-column", "sentence", "--rate", "0.3", "--seed", "1"]
    assert main(args) == 0
    first = target.read_text()
    assert main(args) == 0 and target.read_text() == first  # seeded
    from peftkit.data import load_data

    noisy = load_data(
        None, "classification", train=str(target), text_column="sentence", validation_fraction=1e-6
    )
    clean = load_data(
        None, "classification", train=str(source), text_column="sentence", validation_fraction=1e-6
    )
    both = noisy["train"].num_rows + noisy["validation"].num_rows
    assert both == 20 and noisy["train"]["text"] != clean["train"]["text"]
    assert (
        main(["perturb", str(source), str(target), "--text-column", "text"]) == 1
    )  # no such column: one line
