"""Perturbed test sets: seeded character and word noise for text classification, to measure robustness.

``kind`` names the noise:

- ``char``: each letter or digit is, with probability ``rate``, replaced by a QWERTY keyboard
  neighbour (a typo), flipped in case, or dropped (one of the three, equally likely);
- ``word``: each word is, with probability ``rate``, dropped or swapped with the next word
  (equally likely); a text never loses its last word;
- ``char+word``: word noise, then character noise, each at ``rate``.

Each text draws from its own generator, seeded by ``(seed, row index)``: the same seed gives the
same perturbed file on every machine and Python version, and a row's noise does not depend on the
rows before it (a subset of the test file gets the same noise as in the full file). Labels and
every other column are left as they are.

    peftkit perturb test.tsv noisy.tsv --text-column sentence --kind char+word --rate 0.1 --seed 0
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

KINDS = ("char", "word", "char+word")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row left/right, the rows above and below)."""
    out: dict[str, str] = {}
    for r, row in enumerate(_ROWS):
        for c, key in enumerate(row):
            near = [row[i] for i in (c - 1, c + 1) if 0 <= i < len(row)]
            near += [
                _ROWS[rr][i]
                for rr in (r - 1, r + 1)
                if 0 <= rr < len(_ROWS)
                for i in (c - 1, c, c + 1)
                if 0 <= i < len(_ROWS[rr])
            ]
            out[key] = "".join(near)
    return out


NEIGHBOURS = _neighbours()


def _typo(ch: str, rng: random.Random) -> str:
    lower = ch.lower()
    if lower in NEIGHBOURS:
        new = rng.choice(NEIGHBOURS[lower])
        return new.upper() if ch.isupper() else new
    return rng.choice("0123456789") if ch.isdigit() else ch


def char_noise(text: str, rate: float, rng: random.Random) -> str:
    """Typos, case flips and dropped characters on about ``rate`` of the letters and digits."""
    out = []
    for ch in text:
        if not ch.isalnum() or rng.random() >= rate:
            out.append(ch)
            continue
        action = rng.randrange(3)
        if action == 0:
            out.append(_typo(ch, rng))
        elif action == 1:
            out.append(ch.swapcase() if ch.swapcase() != ch else _typo(ch, rng))
        # action 2: the character is dropped
    return "".join(out)


def word_noise(text: str, rate: float, rng: random.Random) -> str:
    """Dropped words and swapped neighbours on about ``rate`` of the words."""
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        if rng.random() < rate:
            if rng.random() < 0.5 and i + 1 < len(words):
                out += [words[i + 1], words[i]]
                i += 2
                continue
            if len(out) + len(words) - i > 1:  # dropped, unless it is the only word left
                i += 1
                continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def check(kind: str, rate: float) -> None:
    """Refuse an unknown ``kind`` or a ``rate`` outside [0, 1]."""
    if kind not in KINDS:
        raise ValueError(f"noise kind {kind!r}: choose one of {', '.join(KINDS)}.")
    if not 0 <= float(rate) <= 1:
        raise ValueError(
            f"noise rate {rate!r}: must be in [0, 1] (the share of characters / words perturbed)."
        )


def perturb_text(
    text: str, *, kind: str = "char+word", rate: float = 0.1, seed: int = 0, index: int = 0
) -> str:
    """``text`` with ``kind`` noise at ``rate``, drawn from the generator of ``(seed, index)``."""
    check(kind, rate)
    rng = random.Random(int(seed) * 1_000_003 + int(index))
    if "word" in kind:
        text = word_noise(text, rate, rng)
    if "char" in kind:
        text = char_noise(text, rate, rng)
    return text


def perturb_texts(
    texts: list[str], *, kind: str = "char+word", rate: float = 0.1, seed: int = 0
) -> list[str]:
    """Every text perturbed, the i-th with the generator of ``(seed, i)``."""
    return [perturb_text(t, kind=kind, rate=rate, seed=seed, index=i) for i, t in enumerate(texts)]


def perturb_dataset(
    dataset, *, column: str = "text", kind: str = "char+word", rate: float = 0.1, seed: int = 0
):
    """A `datasets.Dataset` with ``column`` perturbed (row i with the generator of ``(seed, i)``)."""
    check(kind, rate)
    return dataset.map(
        lambda row, i: {column: perturb_text(row[column], kind=kind, rate=rate, seed=seed, index=i)},
        with_indices=True,
        desc="peftkit: perturbing",
    )


def perturb_file(
    source: str | Path,
    target: str | Path,
    *,
    text_column: str = "text",
    kind: str = "char+word",
    rate: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write ``source`` (csv, tsv, json lines) to ``target`` with ``text_column`` perturbed; other columns kept."""
    check(kind, rate)
    source, target = Path(source), Path(target)
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix in (".csv", ".tsv"):
        with source.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, **_dialect(suffix)))
    else:
        raise ValueError(
            f"{source}: perturb reads csv, tsv or jsonl files, not {suffix or 'a file without a suffix'}."
        )
    if rows and text_column not in rows[0]:
        raise ValueError(
            f"{source} has no column {text_column!r} (its columns: {', '.join(rows[0])}); "
            "name the text column with --text-column."
        )
    for i, row in enumerate(rows):
        row[text_column] = perturb_text(str(row[text_column]), kind=kind, rate=rate, seed=seed, index=i)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".jsonl", ".json"):
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        with target.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(rows[0]) if rows else [text_column], **_dialect(suffix)
            )
            writer.writeheader()
            writer.writerows(rows)
    return target


def _dialect(suffix: str) -> dict:
    return {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "quotechar": None} if suffix == ".tsv" else {}


def setup_perturb_parser(p):
    """``peftkit perturb SOURCE TARGET``: the arguments (no torch imported)."""
    p.add_argument("source", help="the test file to perturb: csv, tsv or jsonl")
    p.add_argument("target", help="the perturbed copy to write (same format)")
    p.add_argument(
        "--text-column", default="text", metavar="NAME", help="the column to perturb (default: text)"
    )
    p.add_argument(
        "--kind",
        default="char+word",
        choices=KINDS,
        help="char: typos, case flips, dropped characters; "
        "word: dropped and swapped words; char+word: both (default: char+word)",
    )
    p.add_argument(
        "--rate", type=float, default=0.1, help="share of characters / words perturbed (default: 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same file (default: 0)")
    return _run_perturb


def _run_perturb(args) -> int:
    target = perturb_file(
        args.source, args.target, text_column=args.text_column, kind=args.kind, rate=args.rate, seed=args.seed
    )
    print(f"peftkit: wrote {target} ({args.kind} noise at rate {args.rate:g}, seed {args.seed})")
    return 0
