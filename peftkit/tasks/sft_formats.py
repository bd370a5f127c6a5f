"""The data formats causal-LM supervised fine-tuning reads, detected from a file's columns.

- prompt/response: two text columns (``prompt_column`` / ``response_column``); one turn.
- chat messages: a ``messages`` column holding lists of ``{"role", "content"}`` (OpenAI style;
  roles ``system``, ``user``, ``assistant``, ...), any number of turns.
- Alpaca: ``instruction``, optional ``input``, ``output``; the user's turn is the instruction,
  followed by a blank line and the input when there is one.
- ShareGPT: a ``conversations`` column holding lists of ``{"from", "value"}``, ``from`` being
  ``human`` / ``gpt`` / ``system`` (``user`` / ``assistant`` are accepted too).

Every format but prompt/response becomes one canonical ``messages`` column (lists of
``{"role", "content"}``), which `CausalLMTask` renders with the tokenizer's chat template and
trains on the assistant turns only. Columns are checked in the order above: the first format
whose columns a file has wins; a file matching none is refused with one error naming them all.
"""

from __future__ import annotations

import warnings

# format name → the columns it needs (prompt/response: the columns the user named)
FORMATS = {
    "prompt/response": ("{prompt_column}", "{response_column}"),
    "chat messages": ("messages",),
    "Alpaca": ("instruction", "output"),
    "ShareGPT": ("conversations",),
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _error(message: str):
    from ..data import DataError

    return DataError(message)


def detect_format(columns, prompt_column: str = "prompt", response_column: str = "response") -> str | None:
    """The name of the first format in `FORMATS` whose columns are all in ``columns``, else None."""
    names = {"prompt_column": prompt_column, "response_column": response_column}
    for name, needed in FORMATS.items():
        if all(column.format(**names) in columns for column in needed):
            return name
    return None


def conversation_format(
    raw: dict, origin: dict[str, str], prompt_column: str = "prompt", response_column: str = "response"
) -> str | None:
    """The format of every split in ``raw`` (split → Dataset; ``origin``: split → where it was read):
    None for prompt/response columns, else a conversation format's name. A split matching no
    format, or splits of different formats, raise `peftkit.data.DataError`."""
    found = {}
    for split, ds in raw.items():
        name = detect_format(ds.column_names, prompt_column, response_column)
        if name is None:
            formats = "; ".join(
                f"{n}: {', '.join(repr(c.format(prompt_column=prompt_column, response_column=response_column)) for c in cols)}"
                for n, cols in FORMATS.items()
            )
            raise _error(
                f"{origin[split]} matches none of the causal-lm data formats (columns {', '.join(ds.column_names)}). "
                f"Formats and the columns they need: {formats}. Rename its columns, or pass prompt_column= and "
                "response_column= naming the prompt and response columns."
            )
        found[split] = name
    if len(set(found.values())) > 1:
        raise _error(
            f"The splits hold different data formats ({', '.join(f'{s}: {n}' for s, n in found.items())}); use one format."
        )
    name = next(iter(found.values()))
    return None if name == "prompt/response" else name


def _message(turn, keys: tuple[str, str], roles: dict[str, str] | None, where: str) -> dict[str, str]:
    role_key, content_key = keys
    if (
        not isinstance(turn, dict)
        or not isinstance(turn.get(role_key), str)
        or not isinstance(turn.get(content_key), str)
    ):
        raise _error(
            f"{where}: every turn must be an object with text {role_key!r} and {content_key!r} fields; got {turn!r}."
        )
    role = turn[role_key]
    if roles is not None:
        if role not in roles:
            raise _error(
                f"{where}: unknown speaker {role!r} in {role_key!r}; ShareGPT speakers: {', '.join(roles)}."
            )
        role = roles[role]
    return {"role": role, "content": turn[content_key]}


def row_messages(row: dict, name: str, where: str) -> list[dict[str, str]]:
    """One row of format ``name`` as a list of ``{"role", "content"}`` messages."""
    if name == "Alpaca":
        extra = row.get("input") or ""
        user = f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"]
        return [
            {"role": "user", "content": user or ""},
            {"role": "assistant", "content": row["output"] or ""},
        ]
    column, keys, roles = (
        ("messages", ("role", "content"), None)
        if name == "chat messages"
        else ("conversations", ("from", "value"), SHAREGPT_ROLES)
    )
    turns = row[column]
    if not isinstance(turns, list):
        raise _error(f"{where}: the {column!r} column must hold a list of turns; got {turns!r}.")
    return [_message(turn, keys, roles, where) for turn in turns]


def has_answer(messages: list[dict[str, str]]) -> bool:
    """Whether a conversation holds an assistant turn with text to learn."""
    return any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def to_messages(ds, name: str, where: str):
    """``ds`` (of format ``name``) with only a ``messages`` column; conversations without an assistant
    turn to learn from are dropped with a warning that counts them."""
    from datasets import Features, List, Value

    features = Features({"messages": List({"role": Value("string"), "content": Value("string")})})

    def convert(batch):
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        return {"messages": [row_messages(row, name, where) for row in rows]}

    out = ds.map(
        convert,
        batched=True,
        remove_columns=ds.column_names,
        features=features,
        desc="peftkit: conversations",
    )
    kept = out.filter(has_answer, input_columns="messages")
    if len(kept) == 0:
        raise _error(f"{where} ({name} format) holds no conversation with an assistant turn to learn from.")
    if len(kept) < len(out):
        warnings.warn(
            f"{where}: {len(out) - len(kept)} of {len(out)} conversations have no assistant turn with text; they are dropped.",
            stacklevel=2,
        )
    return kept
