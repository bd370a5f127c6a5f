"""Load a dataset for a peftkit task: a hub id, a directory, or files per split → ``DatasetDict``.

``load_data(source, task, ...)`` returns splits ``train``, ``validation`` and (when there is one)
``test``, each holding only the task's canonical columns; the task (`peftkit.tasks`) names them
(``Task.columns``: ``<canonical>_column=`` names the source column) and builds them
(``Task.canonicalize``). Here, the reading, the checks and helpers every task shares. The
built-in tasks' columns:

- classification: ``text`` (str), optional ``text_pair`` (str), ``label`` (``ClassLabel``)
- multi-label-classification: ``text`` (+ ``text_pair``), ``label`` (list[``ClassLabel``])
- token-classification: ``tokens`` (list[str]), ``tags`` (list[``ClassLabel``])
- causal-lm / seq2seq-lm: ``prompt``, ``response`` (str); causal-lm also reads chat ``messages``,
  Alpaca and ShareGPT files, held as one ``messages`` column (`peftkit.tasks.sft_formats`)

Sources: a hub dataset id (``"stanfordnlp/sst2"``, ``"name:config"`` for a config), ``"demo"``
(the intent dataset shipped in the package), a directory holding ``train.*``, ``dev.*`` or
``validation.*`` and ``test.*`` files, a single file (used as train), or ``train=`` /
``validation=`` / ``test=`` file paths (these override a directory's files). Files: ``.csv``,
``.tsv``, ``.json``, ``.jsonl``, ``.parquet`` (read by ``datasets``' builders) and CoNLL ``.txt`` /
``.conll`` (a token and its tags per line, tag in the last column, a blank line between
sentences, ``-DOCSTART-`` lines dropped; parsed here into a ``Dataset``).

Rows whose text (classification ``text``; causal-lm ``prompt`` or ``response``) is empty or
whitespace only are dropped from every split with a warning that counts them, as are empty
words (with their tags) in token classification: they hold nothing to learn or to score. A
training split whose labels (or tags) take a single value is refused: a model trained on it
always answers that label, and reports accuracy 1.0 on data of that label.

Label names come from the training data (strings or ints, sorted) unless the dataset already
has a ``ClassLabel``; a validation or test label the training data lacks is an error. Without a
validation split, one is carved from train (seeded). Bad input raises `DataError` (a
ValueError) naming the split, the file and the fix.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike
Files = PathLike | list[PathLike] | tuple[PathLike, ...]

SPLITS = ("train", "validation", "test")
# File stems accepted for each split inside a data directory (first match wins).
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid", "val"), "test": ("test",)}
# Extension → (datasets builder, builder kwargs). CoNLL gets its column names per file.
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),  # csv.QUOTE_NONE, as GLUE's tsv files need
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("conll", {}),  # parsed by _read_conll
    ".conll": ("conll", {}),
}


class DataError(ValueError):
    """Bad or unreadable training data; the message names the split or file and the fix."""


# --------------------------------------------------------------------------- locations


def demo_data_path() -> Path:
    """The folder of peftkit's demo intent dataset (train/validation/test CSVs, ``text,label``)."""
    return Path(__file__).resolve().parent / "demo_data"


def default_data_dir() -> Path | None:
    """Where the real datasets live: ``$PEFTKIT_DATA_DIR``, else ``../shared/data`` relative to
    the current directory or to the repository (the folder above the ``peftkit`` package) if it
    exists, else None. A ``PEFTKIT_DATA_DIR`` that is not a directory warns and gives None."""
    env = os.environ.get("PEFTKIT_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path.resolve()
        warnings.warn(f"PEFTKIT_DATA_DIR={env!r} is not a directory; ignoring it.", stacklevel=2)
        return None
    repo = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), repo):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    return None


# --------------------------------------------------------------------------- reading


def _files(value: Files) -> list[Path]:
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [Path(v).expanduser() for v in items]


def _split_files_in(folder: Path) -> dict[str, list[Path]]:
    """{split: [file]} for the train/dev|validation/test files in ``folder``."""
    found: dict[str, list[Path]] = {}
    for split, stems in SPLIT_STEMS.items():
        for stem in stems:
            matches = sorted(p for p in folder.iterdir() if p.is_file() and p.stem == stem and p.suffix in FORMATS)
            if matches:
                found[split] = matches[:1]
                break
    if "train" not in found:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(
            f"{folder} has no training file: expected train{{{','.join(FORMATS)}}} (plus dev/validation and "
            f"test files). It holds: {listing}. Rename the files, or pass train=/validation=/test= paths."
        )
    return found


def _check_readable(file: Path, split: str) -> None:
    if not file.exists():
        raise FileNotFoundError(f"The {split} file {file} does not exist (working directory: {Path.cwd()}).")
    if not file.is_file():
        raise DataError(f"The {split} file {file} is not a file. Pass a .csv, .tsv, .json, .jsonl, .parquet or CoNLL .txt file.")
    if file.suffix not in FORMATS:
        raise DataError(
            f"Cannot read {file}: unknown file type {file.suffix!r}. Supported: {', '.join(FORMATS)} "
            "(.txt and .conll are read as CoNLL: a token and its tag per line)."
        )
    if file.stat().st_size == 0:
        raise DataError(f"The {split} split is empty: {file} is an empty file.")
    try:
        with file.open("rb") as f:
            f.read(1)
    except OSError as err:
        raise DataError(f"Cannot read the {split} file {file}: {err}.") from err


def _conll_names(width: int) -> list[str]:
    if width == 4:  # the CoNLL-2003 layout: token, POS, chunk, NER
        return ["tokens", "pos_tags", "chunk_tags", "tags"]
    return ["tokens", *[f"col{i}" for i in range(1, width - 1)], "tags"]


def _read_conll(file: Path) -> dict[str, list[list[str]]]:
    """{column: [per-sentence list]} from a CoNLL file: tokens first, tags last. Every token line
    must hold a tag and as many columns as the first; ``-DOCSTART-`` lines are dropped."""
    width, sentences, current = None, [], []
    try:
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    if current:
                        sentences.append(current)
                        current = []
                    continue
                if fields[0] == "-DOCSTART-":
                    continue
                if len(fields) < 2:
                    raise DataError(
                        f"{file} line {number} ({line.strip()!r}) holds no tag: a CoNLL file needs a token and its "
                        "tag on each line (e.g. 'Paris B-LOC'), with a blank line between sentences."
                    )
                if width is None:
                    width = len(fields)
                elif len(fields) != width:
                    raise DataError(
                        f"{file} line {number} ({line.strip()!r}) has {len(fields)} columns where the first token "
                        f"line has {width}: every line needs the same columns (token ... tag)."
                    )
                current.append(fields)
    except UnicodeDecodeError as err:
        raise DataError(f"Cannot read {file} as CoNLL text: it is not UTF-8 ({err}).") from err
    if current:
        sentences.append(current)
    if width is None:
        raise DataError(f"The CoNLL file {file} holds no sentences (only blank or -DOCSTART- lines).")
    return {name: [[fields[i] for fields in s] for s in sentences] for i, name in enumerate(_conll_names(width))}


def _read_conll_files(files: list[Path]):
    from datasets import Dataset, Features, Sequence, Value

    parts = [_read_conll(f) for f in files]
    if len({tuple(p) for p in parts}) > 1:
        raise DataError(f"The CoNLL files {[str(f) for f in files]} have different numbers of columns.")
    columns = {name: [s for p in parts for s in p[name]] for name in parts[0]}
    return Dataset.from_dict(columns, features=Features({name: Sequence(Value("string")) for name in columns}))


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def _read_files(files: list[Path], split: str, task):
    """One split from local files, through ``datasets``' builders."""
    import datasets

    for file in files:
        _check_readable(file, split)
    if len({FORMATS[f.suffix][0] for f in files}) > 1:
        raise DataError(f"The {split} files {[str(f) for f in files]} mix formats; give one format per split.")
    builder, kwargs = FORMATS[files[0].suffix]
    if builder == "conll":
        if not task.reads_conll:
            users = ", ".join(name for name, cls in _registry().items() if cls.reads_conll)
            raise DataError(
                f"{files[0]} is read as CoNLL (tagged tokens), which only the {users} task uses. "
                f"For {task.name}, give a .csv, .tsv, .json or .jsonl file."
            )
        return _read_conll_files(files)
    try:
        return datasets.load_dataset(builder, data_files={"train": [str(f) for f in files]}, split="train", **kwargs)
    except Exception as err:  # datasets wraps parser errors; name the file and the real cause
        cause = _root_cause(err)
        names = ", ".join(str(f) for f in files)
        if "corresponds to no data" in str(err):
            raise DataError(f"The {split} split is empty: {names} holds no rows (only a header?).") from err
        raise DataError(
            f"Cannot read the {split} file {names} as {builder.upper()} ({files[0].suffix}): "
            f"{type(cause).__name__}: {cause}. Check the file's format (a header row for csv/tsv; one JSON "
            "object per line for jsonl) and that it is UTF-8 text."
        ) from err


def _read_hub(source: str) -> dict[str, Any]:
    """{split: Dataset} from the Hugging Face Hub, split names mapped to train/validation/test."""
    import datasets

    name, _, config = source.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:
        raise DataError(
            f"Could not load dataset {source!r}: it is not a local file or directory (working directory: "
            f"{Path.cwd()}), and loading it from the Hugging Face Hub failed: {type(err).__name__}: {err}. "
            "Pass an existing path, or a hub id (with 'name:config' for a config) on a machine with hub access."
        ) from err
    out = {}
    for split, stems in SPLIT_STEMS.items():
        for stem in stems:
            if stem in loaded:
                out[split] = loaded[stem]
                break
    if "train" not in out:
        raise DataError(f"Dataset {source!r} has splits {list(loaded)}, none of them named 'train'.")
    return out


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS


def _read_raw(source, train, validation, test, task) -> tuple[dict[str, Any], dict[str, str]]:
    """({split: raw Dataset}, {split: where it came from, for messages})."""
    files: dict[str, list[Path]] = {}
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if source is not None:
        source = str(source)
        path = demo_data_path() if source == "demo" else Path(source).expanduser()
        if path.is_dir():
            files = _split_files_in(path)
        elif path.is_file():
            files = {"train": [path]}
        elif _looks_like_path(source):
            raise FileNotFoundError(f"Data source {source!r} does not exist (working directory: {Path.cwd()}).")
        else:
            raw = _read_hub(source)
            origin = {split: f"the {split} split of {source!r}" for split in raw}
    for split, value in (("train", train), ("validation", validation), ("test", test)):
        if value is not None:
            files[split] = _files(value)
            raw.pop(split, None)
    if not files and not raw:
        raise DataError("No data given: pass a source (hub id, directory or file) or train= (plus validation=/test=).")
    if "train" not in files and "train" not in raw:
        raise DataError("No training data: pass train=FILE, or a source that has a train split.")
    for split in SPLITS:
        if split in files:
            raw[split] = _read_files(files[split], split, task)
            origin[split] = f"the {split} split ({', '.join(str(f) for f in files[split])})"
    return {s: raw[s] for s in SPLITS if s in raw}, origin


# --------------------------------------------------------------------------- checking & encoding


def _require_column(ds, column: str, role: str, param: str, where: str) -> None:
    if column not in ds.column_names:
        raise DataError(
            f"{where} has no {role} column {column!r}. Available columns: {', '.join(ds.column_names)}. "
            f"Pass {param}=<one of them>."
        )


def _is_text(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def inner_feature(feature):
    """The element feature of a list feature (``List`` / ``Sequence`` / ``LargeList``), else None."""
    return getattr(feature, "feature", None) if type(feature).__name__ in ("List", "Sequence", "LargeList") else None


def _first_null(ds, column: str) -> int | None:
    col = ds.data.column(column)
    if col.null_count == 0:
        return None
    return int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])


def check_text(ds, column: str, role: str, param: str, where: str) -> None:
    feature = ds.features[column]
    if not _is_text(feature):
        example = ds[0][column] if len(ds) else None
        raise DataError(
            f"The {role} column {column!r} in {where} holds non-text values ({feature}; first row: {example!r}). "
            f"Pass {param}= naming the column that holds the text."
        )
    row = _first_null(ds, column)
    if row is not None:
        raise DataError(
            f"The {role} column {column!r} in {where} holds non-text values: row {row} is empty (null). "
            "Fill in or drop the rows without text."
        )


def check_tokens(ds, column: str, param: str, where: str) -> None:
    inner = inner_feature(ds.features[column])
    if inner is None or not _is_text(inner):
        raise DataError(
            f"The tokens column {column!r} in {where} must hold lists of words (strings); it holds "
            f"{ds.features[column]}. Pass {param}= naming the column of word lists."
        )
    row = _first_null(ds, column)
    if row is None:
        flat = ds.data.column(column).combine_chunks().flatten()
        if flat.null_count:
            row = -1
    if row is not None:
        raise DataError(f"The tokens column {column!r} in {where} holds missing words (nulls){f' in row {row}' if row >= 0 else ''}.")


def label_name(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise DataError(
                f"Label {value!r} is not a class: classification labels must be strings or integers "
                "(regression is not supported)."
            )
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value
    raise DataError(f"Label {value!r} ({type(value).__name__}) is not a class: labels must be strings or integers.")


def _sort_names(names: set[str]) -> list[str]:
    """Integers numerically, "O" (the outside tag) first, then alphabetically."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names, key=lambda n: (n != "O", n))


def class_names(feature) -> list[str] | None:
    from datasets import ClassLabel

    return list(feature.names) if isinstance(feature, ClassLabel) else None


def label_values(ds, column: str, nested: bool) -> list[str]:
    """Distinct label names in a column (of lists when ``nested``)."""
    import pyarrow.compute as pc

    try:
        col = ds.data.column(column).combine_chunks()
        values = pc.unique(col.flatten() if nested else col).to_pylist()
    except (NotImplementedError, TypeError, ValueError):  # e.g. a Json column of mixed types
        values = [v for row in ds[column] for v in row] if nested else list(ds[column])
    return sorted({label_name(v) for v in values if v is not None})


def _check_labels_present(ds, column: str, where: str, nested: bool) -> None:
    row = _first_null(ds, column)
    if row is None and nested and ds.data.column(column).combine_chunks().flatten().null_count:
        row = -1
    if row is not None:
        raise DataError(f"{where} has rows without a label in {column!r}{f' (row {row})' if row >= 0 else ''}; label every row or drop those rows.")


def encode_labels(raw: dict[str, Any], origin: dict[str, str], column: str, nested: bool) -> tuple[dict[str, Any], list[str]]:
    """Names from train (or its ClassLabel); each split's labels checked against them.

    Returns ({split: (dataset, {name: id} or None when already ClassLabel ids)}, names)."""
    train_feature = raw["train"].features[column]
    existing = class_names(inner_feature(train_feature) if nested else train_feature)
    if existing is not None:
        return {s: (ds, None) for s, ds in raw.items()}, existing
    _check_labels_present(raw["train"], column, origin["train"], nested)
    names = _sort_names(set(label_values(raw["train"], column, nested)))
    if not names:
        raise DataError(f"{origin['train']} holds no labels in {column!r}.")
    ids = {name: i for i, name in enumerate(names)}
    out = {}
    for split, ds in raw.items():
        if split != "train":
            _check_labels_present(ds, column, origin[split], nested)
            unseen = sorted(set(label_values(ds, column, nested)) - ids.keys())
            if unseen:
                shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
                raise DataError(
                    f"{origin[split]} has label(s) the training data does not have: {shown}. The label set comes "
                    f"from train ({len(names)} labels: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}); "
                    "add training examples for those labels or drop those rows."
                )
        out[split] = (ds, ids)
    return out, names


def canonical_columns(ds, mapping: dict[str, str], features, label_ids: dict[str, int] | None, label_key: str | None, nested: bool):
    """A dataset holding only the canonical columns (``mapping``: canonical → source column)."""

    def convert(batch):
        out = {canon: batch[src] for canon, src in mapping.items()}
        if label_ids is not None and label_key is not None:
            values = out[label_key]
            if nested:
                out[label_key] = [[label_ids[label_name(v)] for v in row] for row in values]
            else:
                out[label_key] = [label_ids[label_name(v)] for v in values]
        return out

    return ds.map(convert, batched=True, remove_columns=ds.column_names, features=features, desc="peftkit: columns")


def check_lengths(ds, where: str) -> None:
    import pyarrow.compute as pc

    tokens = pc.list_value_length(ds.data.column("tokens")).to_numpy(zero_copy_only=False)
    tags = pc.list_value_length(ds.data.column("tags")).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(tokens != tags)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{where}: row {row} has {tokens[row]} tokens but {tags[row]} tags ({bad.size} such rows); "
            "every word needs exactly one tag."
        )
    empty = np.flatnonzero(tokens == 0)
    if empty.size:
        raise DataError(f"{where}: row {int(empty[0])} has no tokens ({empty.size} such rows); drop empty sentences.")


def _blank(strings) -> np.ndarray:
    """Which entries of a pyarrow string array are empty or whitespace only (nulls count as blank)."""
    import pyarrow.compute as pc

    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(strings)), 0)
    return pc.fill_null(blank, True).to_numpy(zero_copy_only=False)


def drop_blank_rows(ds, columns: dict[str, str], where: str):
    """``ds`` without the rows whose text is empty or whitespace only in any of ``columns``
    (canonical name → the user's column name), with a warning that counts them.

    They are dropped, not kept: a label (or answer) without text teaches the model nothing but a
    bias, and scoring it measures nothing. A split left with no rows is an error."""
    blank = np.zeros(len(ds), dtype=bool)
    named = []
    for canonical, name in columns.items():
        mask = _blank(ds.with_format("arrow")[canonical].combine_chunks())
        if mask.any():
            named.append(repr(name))
        blank |= mask
    count = int(blank.sum())
    if not count:
        return ds
    what = f"an empty or whitespace-only {' or '.join(named)}"
    if count == len(ds):
        raise DataError(f"{where}: every row ({count}) has {what}: there is no text to train or evaluate on. "
                        f"Check that {' and '.join(f'{c}_column=' for c in columns)} "
                        f"{'name the columns' if len(columns) > 1 else 'names the column'} holding the text.")
    warnings.warn(
        f"{where}: {count} of {len(ds)} rows have {what} (first: row {int(np.flatnonzero(blank)[0])}); dropped "
        "them. Fill in or remove those rows to silence this warning.",
        stacklevel=3,
    )
    return ds.select(np.flatnonzero(~blank))


def drop_blank_tokens(ds, name: str, where: str):
    """``ds`` without empty or whitespace-only words (and their tags), with a warning that counts
    them: the tokenizer gives such a word no sub-token, so it could be neither learned nor scored.
    Sentences left without words are dropped too."""
    import pyarrow.compute as pc

    column = ds.with_format("arrow")["tokens"].combine_chunks()
    blank = _blank(column.flatten())
    count = int(blank.sum())
    if not count:
        return ds
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)[blank]

    def keep(batch):
        sentences = zip(batch["tokens"], batch["tags"], strict=True)
        pairs = [[(w, t) for w, t in zip(words, tags, strict=True) if w.strip()] for words, tags in sentences]
        return {"tokens": [[w for w, _ in p] for p in pairs], "tags": [[t for _, t in p] for p in pairs]}

    ds = ds.map(keep, batched=True, features=ds.features, desc="peftkit: dropping blank words")
    kept = ds.filter(len, input_columns="tokens")
    emptied = len(ds) - len(kept)
    if not len(kept):
        raise DataError(f"{where}: every word in {name!r} is empty or whitespace-only; there is nothing to tag.")
    warnings.warn(
        f"{where}: {count} word(s) in {len(set(rows.tolist()))} row(s) of {name!r} are empty or whitespace-only (first: "
        f"row {int(rows[0])}); dropped them with their tags{f', and the {emptied} row(s) left without words' if emptied else ''}. "
        "Remove those words to silence this warning.",
        stacklevel=3,
    )
    return kept


def _task(task):
    """The Task object for a task name (or the Task itself)."""
    from .tasks import get_task

    return get_task(task)


def _distinct_labels(ds, task) -> list[int]:
    """The label (or tag) ids a split holds in the task's label column; [] for tasks without one."""
    import pyarrow.compute as pc

    task = _task(task)
    canonical = task.label_column
    if canonical is None or canonical not in ds.column_names or not len(ds):
        return []
    values = ds.with_format("arrow")[canonical].combine_chunks()
    return pc.unique(values.flatten() if task.nested_labels else values).drop_null().to_pylist()


def check_classes(train, task, where: str = "the train split", column: str | None = None, hint: str = "") -> None:
    """Refuse a training split whose labels (tags) take one value, for a task with a label column.

    A model trained on it learns to always answer that label, and an evaluation holding only that
    label reports accuracy 1.0. ``where`` and ``column`` (the user's name for the label column)
    go into the message; ``hint`` (a sentence left open for "add training rows ...") says how the
    split came to hold one label when peftkit made it so.
    """
    task = _task(task)
    distinct = _distinct_labels(train, task)
    if len(distinct) != 1:
        return
    canonical, nested = task.label_column, task.nested_labels
    names = class_names(inner_feature(train.features[canonical]) if nested else train.features[canonical])
    label = names[distinct[0]] if names and 0 <= distinct[0] < len(names) else distinct[0]
    column = column or canonical
    param = f"{canonical}_column"
    noun = "tag" if canonical == "tags" else "label"
    if noun == "tag":
        effect = f"every tag in {column!r} is {label!r}: the model would learn to tag every word {label!r}"
    else:
        effect = (f"every row's {column!r} is {label!r}: the model would learn to always answer {label!r}, "
                  "and an evaluation on that label alone would report accuracy 1.0")
    raise DataError(
        f"{where} holds a single {noun}: {effect}. {hint}{'a' if hint else 'A'}dd training rows with at least one "
        f"other {noun} (or check that {param}= names the {noun} column)."
    )


def drop_unlabelled(raw: dict[str, Any], origin: dict[str, str], column: str) -> None:
    """Hub test splits often carry label -1 (unlabelled, e.g. GLUE): drop such a split."""
    for split in ("validation", "test"):
        ds = raw.get(split)
        if ds is None or column not in ds.column_names or class_names(ds.features[column]) is None:
            continue
        values = ds.data.column(column).to_numpy(zero_copy_only=False)
        if len(values) and (values < 0).all():
            warnings.warn(f"{origin[split]} is unlabelled (every label is -1); dropping it.", stacklevel=3)
            del raw[split]


# --------------------------------------------------------------------------- public


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise DataError(f"max samples must be at least 1, got {n}.")
    rng = np.random.default_rng(seed)
    return ds.select(sorted(rng.choice(len(ds), size=n, replace=False).tolist()))


def load_options(task) -> tuple[dict[str, str | None], dict[str, Any]]:
    """({load_data column kwarg: default}, {other load_data option: default}) of a task."""
    task = _task(task)
    return task.column_options(), dict(task.options)


def all_load_options() -> dict[str, Any]:
    """Every registered task's load_data column kwargs and options, with a default each (the
    first task's that names it): the keys flags, YAML files and load_data share."""
    from .tasks import TASKS

    out: dict[str, Any] = {}
    for cls in TASKS.values():
        for key, value in {**cls.column_options(), **cls.options}.items():
            out.setdefault(key, value)
    return out


def _split_options(task, given: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, Any]]:
    """The task's ({canonical column: the user's column or None}, {option: value}) from load_data's
    keyword arguments. Another task's option is ignored at its default and refused otherwise."""
    columns, options = load_options(task)
    known = all_load_options()
    for key, value in given.items():
        if key in columns or key in options:
            continue
        if key not in known:
            raise TypeError(f"load_data() got an unexpected keyword argument {key!r}; the {task.name} task takes "
                            f"{', '.join([*columns, *options])}.")
        if value is not None and value != known[key]:
            users = [name for name, cls in _registry().items() if key in {**cls.column_options(), **cls.options}]
            raise DataError(f"{key}={value!r} applies to the {', '.join(users)} task(s), not {task.name}; leave it out.")
    columns = {key[: -len("_column")]: given.get(key, default) for key, default in columns.items()}
    options = {key: given.get(key, default) for key, default in options.items()}
    return columns, options


def _registry():
    from .tasks import TASKS

    return TASKS


def load_data(
    source: str | os.PathLike | None,
    task,
    *,
    train: Files | None = None,
    validation: Files | None = None,
    test: Files | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    **options: Any,
):
    """Load ``source`` (hub id, ``"demo"``, directory or file; or None with ``train=``) for ``task``
    (a registered task's name, or a Task).

    Returns a ``datasets.DatasetDict`` with "train", "validation" and, when the source has one,
    "test", holding the task's canonical columns (see the module docstring). ``options``: the
    task's column names (``text_column="sentence"``: ``<canonical>_column``) and other load
    options (``label_separator``); another task's option at its default is ignored. Without a
    validation split, ``validation_fraction`` of train is carved off (seeded, stratified by label
    for classification when possible). ``max_train_samples`` / ``max_eval_samples`` keep a
    seeded random subset of train / of validation and test.
    """
    from datasets import DatasetDict

    task = _task(task)
    columns, task_options = _split_options(task, options)
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction must be between 0 and 1, got {validation_fraction}.")
    raw, origin = _read_raw(source, train, validation, test, task)
    task.drop_unusable(raw, origin, columns)
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DataError(f"The {split} split is empty: {origin[split]} holds no rows.")
        for canon, column in columns.items() if task.needs_columns(ds, columns) else ():
            if column is not None:
                _require_column(ds, column, canon.replace("_", " "), f"{canon}_column", origin[split])
    out = task.canonicalize(raw, origin, columns, task_options)

    label_column = columns.get(task.label_column) if task.label_column else None
    carved = "validation" not in out
    several = len(_distinct_labels(out["train"], task)) > 1
    if carved:
        out["train"], out["validation"] = _carve_validation(out["train"], validation_fraction, seed,
                                                            task.label_column if task.stratify else None)
    check_classes(out["train"], task, origin["train"], label_column, (
        f"It has others, but carving a validation split (validation_fraction={validation_fraction}) took their "
        "only rows: give a validation file, or ") if carved and several else "")
    out["train"] = _subset(out["train"], max_train_samples, seed)
    check_classes(out["train"], task, origin["train"], label_column,
                  f"It has others, but max_train_samples={max_train_samples} kept rows of one only: raise it, or ")
    for split in ("validation", "test"):
        if split in out:
            out[split] = _subset(out[split], max_eval_samples, seed)
    return DatasetDict({s: out[s] for s in SPLITS if s in out})


def _carve_validation(train, fraction: float, seed: int, stratify: str | None):
    n_val = max(1, round(len(train) * fraction))
    if len(train) - n_val < 1:
        raise DataError(
            f"The train split has {len(train)} row(s): too few to carve a validation split from. "
            "Give more training rows or a validation file."
        )
    if stratify:
        try:
            parts = train.train_test_split(test_size=n_val, seed=seed, stratify_by_column=stratify)
            return parts["train"], parts["test"]
        except ValueError:  # a class too small to stratify: fall back to a plain seeded split
            pass
    parts = train.train_test_split(test_size=n_val, seed=seed)
    return parts["train"], parts["test"]


def checkpoint_label_ids(file_names: list[str], checkpoint_names: list[str]) -> tuple[list[int], list[str]]:
    """(each of a labelled file's label names as the checkpoint's label id, the names it cannot place).

    A name is matched to the checkpoint's label of that name; an integer name the checkpoint does not
    know (SST-2's 0/1 against a checkpoint labelled negative/positive) is taken as a label index.
    The file may hold fewer labels than the checkpoint, in another order.
    """
    index = {name: i for i, name in enumerate(checkpoint_names)}
    ids, unknown = [], []
    for name in file_names:
        if name in index:
            ids.append(index[name])
        elif name.lstrip("-").isdigit() and 0 <= int(name) < len(checkpoint_names):
            ids.append(int(name))
        else:
            ids.append(-1)
            unknown.append(name)
    return ids, unknown


def label_names(dataset_dict, task) -> list[str] | None:
    """The class names of a `load_data` result (None for tasks without a label column)."""
    task = _task(task)
    column = task.label_column
    if column is None:
        return None
    for ds in dataset_dict.values():
        if column in ds.column_names:
            feature = ds.features[column]
            names = class_names(inner_feature(feature) if task.nested_labels else feature)
            if names is None:
                raise DataError(f"Column {column!r} is {feature}, not a ClassLabel: load the data with peftkit.data.load_data.")
            return names
    raise DataError(f"The data has no {column!r} column for {task.name}: load it with peftkit.data.load_data(..., {task.name!r}).")
