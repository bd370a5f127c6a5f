"""Regenerate peftkit's demo intent dataset: ``python peftkit/demo_data/make_demo.py``.

A demo written for peftkit (not a benchmark): short customer-support messages over six intents,
built from sentence templates and slot fillers. Every intent gets the same number of messages;
each intent's unique messages are shuffled with a fixed seed and dealt into train / validation /
test, so no message appears in two splits and the output is identical on every run.
"""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

SEED = 2024
PER_INTENT = {"train": 50, "validation": 10, "test": 10}

SLOTS = {
    "card": ["card", "debit card", "credit card", "bank card", "visa card", "ATM card", "prepaid card", "travel card"],
    "item": ["order", "package", "parcel", "headphones", "jacket", "phone case", "shoes", "laptop bag"],
    "order_id": ["#48213", "#10577", "#66120", "#93402", "A-3391", "B-7730"],
    "days": ["two days", "three days", "a week", "ten days", "two weeks"],
    "place": ["new address", "new flat", "office address", "parents' house", "new home"],
    "charge": ["a charge", "a fee", "an extra charge", "a double payment", "a monthly fee"],
}

TEMPLATES = {
    "card_lost": [
        "I lost my {card}",
        "I can't find my {card} anywhere",
        "my {card} was stolen",
        "someone stole my {card} yesterday",
        "please block my {card}, it is missing",
        "I think I left my {card} at a restaurant",
        "how do I freeze a lost {card}?",
        "my wallet with my {card} is gone",
        "can you cancel my stolen {card}",
        "I need a replacement for my lost {card}",
        "help, my {card} disappeared",
        "I dropped my {card} somewhere in town",
    ],
    "refund_request": [
        "I want a refund for my {item}",
        "can I get my money back for the {item}?",
        "the {item} arrived broken, please refund me",
        "how do I return the {item} for a refund",
        "please refund order {order_id}",
        "I returned the {item} but still have no refund",
        "refund my {item}, it does not fit",
        "I'd like to send back the {item} and get reimbursed",
        "when will I get the refund for order {order_id}?",
        "the {item} is not what I ordered, I want a refund",
        "money back for the {item} please",
        "the {item} stopped working, can I be refunded",
    ],
    "change_address": [
        "I moved, please update my address to my {place}",
        "how can I change my delivery address?",
        "please ship order {order_id} to my {place} instead",
        "I need to change the address on my account",
        "can you send my {item} to my {place}",
        "update my shipping address for order {order_id}",
        "my address is wrong, how do I fix it",
        "I want the {item} delivered to my {place}",
        "change the address on order {order_id} please",
        "where do I edit my home address",
        "new address: please use my {place} from now on",
        "the {item} should go to my {place}, not the old one",
    ],
    "delivery_status": [
        "where is my {item}?",
        "my {item} has not arrived after {days}",
        "can you track order {order_id}",
        "when will my {item} be delivered?",
        "order {order_id} still hasn't shown up",
        "what is the status of my {item}",
        "I've been waiting {days} for my {item}",
        "is order {order_id} on its way?",
        "the tracking for my {item} hasn't changed in {days}",
        "has my {item} shipped yet",
        "how long until order {order_id} arrives",
        "my {item} is late, where is it",
    ],
    "cancel_order": [
        "please cancel my order for the {item}",
        "I want to cancel order {order_id}",
        "cancel the {item}, I don't need it anymore",
        "how do I cancel an order?",
        "I ordered the {item} by mistake, cancel it",
        "stop order {order_id} before it ships",
        "can I still cancel the {item}",
        "I changed my mind about the {item}, cancel please",
        "cancel order {order_id} right away",
        "is it too late to cancel my {item}",
        "I'd like to cancel my purchase of the {item}",
        "don't send order {order_id}, I want to cancel",
    ],
    "billing_question": [
        "why was I billed {charge}?",
        "there is {charge} on my statement I don't understand",
        "I see {charge} on my {card}, what is it for",
        "can you explain {charge} on my bill",
        "my invoice shows {charge}",
        "why did you take {charge} from my account",
        "I was charged twice for order {order_id}",
        "what is {charge} on my last invoice?",
        "how do I get a copy of my invoice for order {order_id}",
        "my {card} statement shows {charge} from you",
        "question about {charge} on my bill",
        "why is my bill higher this month",
    ],
}

PREFIXES = ["", "hi, ", "hello, ", "excuse me, ", "urgent: "]
SUFFIXES = ["", " thanks", " please help", "!", " asap"]


def fill(template: str) -> list[str]:
    """Every way of filling ``template``'s slots."""
    names = [name for name in SLOTS if "{" + name + "}" in template]
    choices = itertools.product(*(SLOTS[name] for name in names))
    return [template.format(**dict(zip(names, values, strict=True))) for values in choices]


def messages(intent: str, rng: random.Random) -> list[str]:
    """Unique messages for ``intent``: each filled template, with a random opener and closer."""
    out: set[str] = set()
    for template in TEMPLATES[intent]:
        for text in fill(template):
            prefix, suffix = rng.choice(PREFIXES), rng.choice(SUFFIXES)
            message = prefix + text + suffix
            out.add(message[0].upper() + message[1:] if rng.random() < 0.5 else message)
    return sorted(out)


def build(seed: int = SEED) -> dict[str, list[dict[str, str]]]:
    """{split: rows}, each row {"text", "label"}; balanced over intents, disjoint across splits."""
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in PER_INTENT}
    for intent in TEMPLATES:
        pool = messages(intent, rng)
        rng.shuffle(pool)
        need = sum(PER_INTENT.values())
        if len(pool) < need:
            raise ValueError(f"intent {intent!r} has only {len(pool)} unique messages; {need} needed")
        start = 0
        for split, n in PER_INTENT.items():
            splits[split] += [{"text": text, "label": intent} for text in pool[start : start + n]]
            start += n
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main(folder: Path = Path(__file__).parent) -> None:
    for split, rows in build().items():
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"{folder / f'{split}.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
