"""Small helpers shared by the end-to-end and failure tests."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

WORDS = {
    "pos": "good great lovely excellent superb wonderful happy fine".split(),
    "neg": "bad awful terrible poor horrible sad broken nasty".split(),
}


def write_reviews(path: Path, rows: int, *, seed: int, labelled: bool = True, blank_rows=frozenset()) -> Path:
    """Write a synthetic sentiment CSV (`id,text[,label]`); rows in `blank_rows` get a blank text."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"] if labelled else ["id", "text"])
        for i in range(rows):
            label = rng.choice(["pos", "neg"])
            text = " " if i in blank_rows else " ".join(rng.choices(WORDS[label], k=rng.randint(2, 12)))
            writer.writerow([f"r{i}", text, label] if labelled else [f"r{i}", text])
    return path


NER_PEOPLE = "alice bob carol dave erin frank".split()
NER_PLACES = ["paris", "london", "berlin", "rome", "madrid", "oslo", "new york", "san diego"]
NER_TEMPLATES = [
    "{per} visited {loc} today", "{per} and {per} met in {loc}", "yesterday {per} flew from {loc} to {loc}",
    "the weather in {loc} was fine", "{per} met {per} yesterday", "today {per} flew to {loc}",
]


def ner_sentences(rows: int, *, seed: int) -> list[tuple[list[str], list[str]]]:
    """Return synthetic (tokens, BIO tags) sentences with PER and LOC entities, some of two words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(rows):
        tokens, tags = [], []
        for part in rng.choice(NER_TEMPLATES).split():
            if part in ("{per}", "{loc}"):
                kind, words = ("PER", [rng.choice(NER_PEOPLE)]) if part == "{per}" else ("LOC", rng.choice(NER_PLACES).split())
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(part)
                tags.append("O")
        sentences.append((tokens, tags))
    return sentences


def translation_pairs(rows: int, *, seed: int) -> list[tuple[str, str]]:
    """Return synthetic (source, target) pairs: the target is the source word by word in a made-up language."""
    from tests.tiny_models import TRANSLATIONS

    rng = random.Random(seed)
    words = list(TRANSLATIONS)
    pairs = []
    for _ in range(rows):
        source = rng.choices(words, k=rng.randint(3, 7))
        pairs.append((" ".join(source), " ".join(TRANSLATIONS[w] for w in source)))
    return pairs


def qa_examples(rows: int, *, seed: int) -> list[dict]:
    """Return synthetic SQuAD-style rows: who lives or works where, asked one way or the other."""
    rng = random.Random(seed)
    places = [p for p in NER_PLACES if " " not in p]
    out = []
    for i in range(rows):
        (p1, p2), (l1, l2) = rng.sample(NER_PEOPLE, 2), rng.sample(places, 2)
        context = f"{p1} lives in {l1} . {p2} works in {l2} ."
        question, answer = rng.choice([
            (f"where does {p1} live ?", l1), (f"where does {p2} work ?", l2),
            (f"who lives in {l1} ?", p1), (f"who works in {l2} ?", p2),
        ])
        start = context.index(f" {answer} ") + 1 if not context.startswith(answer + " ") else 0
        out.append({"id": f"q{i}", "question": question, "context": context,
                    "answers": {"text": [answer], "answer_start": [start]}})
    return out


def write_conll(path: Path, sentences, *, docstart: bool = True) -> Path:
    """Write sentences as a CoNLL column file: `token<TAB>tag`, a blank line between sentences."""
    with open(path, "w") as out:
        if docstart:
            out.write("-DOCSTART-\tO\n\n")
        for tokens, tags in sentences:
            out.writelines(f"{token}\t{tag}\n" for token, tag in zip(tokens, tags))
            out.write("\n")
    return path


def wait_until(predicate, *, timeout: float, message: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting until {message}")


TOPICS = {  # label -> words that mention it (all known to the tiny tokenizer of tests/tiny_models.py)
    "praise": ["good", "great", "nice", "lovely", "excellent", "wonderful", "happy", "superb"],
    "complaint": ["bad", "awful", "terrible", "horrible", "poor", "sad", "ugly", "nasty"],
}
TOPIC_FILLER = ["the", "movie", "was", "and", "food", "room", "day", "service"]


def topic_rows(count: int, *, seed: int = 0) -> list[dict]:
    """Multi-label rows {"text", "labels"}: the labels are the topics the text mentions, none, one or both."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        labels = sorted(label for label in TOPICS if rng.random() < 0.45)
        words = [word for label in labels for word in rng.sample(TOPICS[label], 4)]
        words += rng.sample(TOPIC_FILLER, rng.randint(1, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows
