"""Write the demo datasets in nightshift/demo_data/ from the project's own templates and phrase lists.

Every sentence comes from the lists below, written for this project, so the files carry no
third-party text. Output is deterministic: the same seeds always write the same bytes.

    python scripts/make_demo_data.py [--out nightshift/demo_data]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

REVIEWS_SEED = 20240611
DOCUMENTS_SEED = 7321
REVIEWS_PER_LABEL = 300
DOCUMENT_COUNT = 2000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "nightshift" / "demo_data"

# Each kind of thing reviewed: singular subjects, opinions that only fit that kind, and
# neutral context a reviewer might add.
KINDS = {
    "product": {
        "subjects": [
            "this blender", "the wireless headset", "the robot vacuum", "this hiking backpack",
            "the electric kettle", "the standing desk", "this phone case",
        ],
        "positive": [
            "arrived early and worked perfectly out of the box",
            "feels sturdy and well made",
            "still works like new after months of daily use",
        ],
        "negative": [
            "broke within a week",
            "arrived scratched and missing parts",
            "stopped working after a few days",
        ],
        "filler": [
            "I ordered it online and it came in a plain cardboard box.",
            "I replaced an older model with it.",
            "It was a birthday present from my brother.",
        ],
    },
    "app": {
        "subjects": [
            "the budgeting app", "this meditation app", "the food delivery app",
            "the new photo editor", "this language learning app", "the banking app",
        ],
        "positive": [
            "ran smoothly and never crashed once",
            "had a clean layout that was easy to learn",
            "synced instantly between my phone and my laptop",
        ],
        "negative": [
            "crashed every time I opened it",
            "drained my battery and spammed me with notifications",
            "lost all of my saved data after an update",
        ],
        "filler": [
            "I use it mostly on my phone.",
            "I installed it after seeing an advert.",
            "I tried the free version before paying for a subscription.",
        ],
    },
    "restaurant": {
        "subjects": [
            "the ramen place on Fifth Street", "this little taco stand",
            "the Italian restaurant by the station", "the vegan cafe downtown",
            "the sushi bar near my office", "the bakery on the corner",
        ],
        "positive": [
            "served fresh food in generous portions",
            "had friendly staff and fast service",
            "cooked every dish with real flavor",
        ],
        "negative": [
            "served cold food after an hour-long wait",
            "had staff who ignored us for twenty minutes",
            "charged us for dishes we never ordered",
        ],
        "filler": [
            "We went there for a late lunch.",
            "We booked a table for four on a Friday night.",
            "I ordered the daily special.",
        ],
    },
    "shop": {
        "subjects": [
            "the hardware store on Elm Road", "this online bookshop", "the garden center",
            "the bike shop near the park", "the shoe store at the mall",
        ],
        "positive": [
            "had exactly what I needed in stock",
            "had staff who gave genuinely helpful advice",
            "had fair prices and a great selection",
        ],
        "negative": [
            "never had anything I needed in stock",
            "had staff who could not answer a single question",
            "refused to take back a faulty item",
        ],
        "filler": [
            "I stopped by on my way home from work.",
            "I was looking for a gift for my neighbor.",
            "I have shopped there a few times over the years.",
        ],
    },
    "service": {
        "subjects": [
            "the moving company we hired", "the hair salon on Oak Avenue",
            "the car wash on Route 9", "the dry cleaner near my flat", "the plumber we called",
            "the cleaning service",
        ],
        "positive": [
            "showed up on time and finished early",
            "handled everything with real care",
            "did careful, tidy work at a fair price",
        ],
        "negative": [
            "showed up two hours late",
            "overcharged me without any explanation",
            "left the job half finished",
        ],
        "filler": [
            "We booked them through their website.",
            "It was the first time I had used a service like this.",
            "They were recommended by a coworker.",
        ],
    },
}

POSITIVE = [
    "exceeded my expectations", "was worth every penny", "made my week",
    "was a genuinely pleasant surprise", "did exactly what I hoped it would",
    "was better than anything similar I have tried", "turned out to be a great choice",
    "impressed me from the very first day", "was reliable from start to finish",
    "felt like excellent value for the money", "delivered far more than I paid for",
    "won me over completely", "was a real pleasure to deal with",
    "left me with nothing to complain about", "got everything right", "was simply fantastic",
    "was quick, friendly and easy", "lived up to every good review I had read",
    "has become one of my favorites", "was a joy from beginning to end",
    "made everything feel effortless", "was thoughtful in every little detail",
    "was consistently excellent", "put a smile on my face",
    "earned a permanent place in my routine",
]

NEGATIVE = [
    "was a complete waste of money", "fell far short of what was advertised",
    "let me down badly", "was frustrating from start to finish", "was not worth half the price",
    "disappointed me in almost every way", "was the worst money I spent this year",
    "turned out to be a total letdown", "gave me nothing but headaches",
    "was sloppy and careless", "felt overpriced and cheap at the same time",
    "made a simple thing needlessly difficult", "was unreliable from the very first day",
    "left a bad taste in my mouth", "ruined what should have been a nice afternoon",
    "did not live up to a single promise", "was a mess from beginning to end",
    "was far worse than the reviews suggested", "made me wish I had gone elsewhere",
    "was honestly terrible", "wasted hours of my time", "was slow, confusing and disorganized",
    "never did what it was supposed to do", "was an utter disappointment",
    "got almost everything wrong",
]

TEMPLATES = {
    "positive": [
        "{S} {p}.", "Honestly, {s} {p}.", "I was skeptical at first, but {s} {p}.",
        "I have to say {s} {p}.", "{S} {p}, which is rare these days.",
        "My whole family agrees that {s} {p}.", "All things considered, {s} {p}.",
    ],
    "negative": [
        "{S} {p}.", "Sadly, {s} {p}.", "I really wanted to like it, but {s} {p}.",
        "I hate to say it, but {s} {p}.", "{S} {p}, and that says it all.",
        "To be blunt, {s} {p}.", "Unfortunately, {s} {p}.",
    ],
}

FOLLOW_UPS = {
    "positive": ["On top of that, it {p}.", "Beyond that, it {p}.", "Best of all, it {p}."],
    "negative": ["On top of that, it {p}.", "Beyond that, it {p}.", "Worst of all, it {p}."],
}

# Mixed sentences: a point on the other side, but the verdict is still clear.
MIXED = {
    "positive": [
        "It was a little pricey, but the quality more than makes up for it.",
        "The wait was longer than expected, although the result was excellent.",
        "It is not perfect, but it is easily the best option I have found.",
        "I had one small problem, and it was sorted out within the hour.",
        "It is not the cheapest, but I would gladly pay for it again.",
        "There is room for improvement, but overall I am delighted.",
        "My first impression was lukewarm, but it won me over quickly.",
        "A couple of details could be better, yet I am very happy overall.",
    ],
    "negative": [
        "The staff were polite, but that does not fix the core problems.",
        "It looks nice, but looks are the only good thing about it.",
        "The price was low, yet I still feel I overpaid.",
        "A few things worked, but most of it was a disappointment.",
        "The first day was fine, and then everything went downhill.",
        "The idea is good, but the execution is awful.",
        "Customer support apologized, but nothing was ever fixed.",
        "There were one or two bright spots, but not nearly enough.",
    ],
}

CLOSERS = {
    "positive": [
        "Five stars from me.", "Would recommend without hesitation.",
        "I will definitely be back.", "Highly recommended!", "Ten out of ten.",
        "Great job to everyone involved.", "I am already telling my friends about it.",
    ],
    "negative": [
        "One star, and that is generous.", "I asked for a refund.", "Never again.",
        "Avoid if you can.", "Save your money.", "I will not be returning.",
        "I have already switched to a competitor.",
    ],
}

FILLER = [
    "A friend recommended it to me.", "I found it through an online search.",
    "This is my first review in years.", "I compared a few options before deciding.",
    "I have been a customer for about six months.", "It was my partner's idea to try it.",
    "I am writing this a week later.", "We tried it as a family.",
]


def capitalize(text: str) -> str:
    """Return text with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def verdict_phrase(rng: random.Random, kind: dict, label: str) -> str:
    """Return an opinion phrase of the given sentiment that fits the kind."""
    return rng.choice((POSITIVE if label == "positive" else NEGATIVE) + kind[label])


def opinion(rng: random.Random, kind: dict, label: str) -> tuple[str, set[str]]:
    """Return a sentence giving a verdict on one subject of the kind, and its parts."""
    subject, phrase = rng.choice(kind["subjects"]), verdict_phrase(rng, kind, label)
    template = rng.choice(TEMPLATES[label])
    return template.format(S=capitalize(subject), s=subject, p=phrase), {phrase}


def extra_sentence(rng: random.Random, kind: dict, label: str, last: bool) -> tuple[str, set[str]]:
    """Return one more sentence (context, a mixed point, a verdict or a closer) and its parts."""
    roll = rng.random()
    if last and roll < 0.5:
        sentence = rng.choice(CLOSERS[label])
    elif roll < 0.35:
        sentence = rng.choice(FILLER + kind["filler"])
    elif roll < 0.65:
        sentence = rng.choice(MIXED[label])
    else:
        lead, phrase = rng.choice(FOLLOW_UPS[label]), verdict_phrase(rng, kind, label)
        return lead.format(p=phrase), {lead, phrase}
    return sentence, {sentence}


def compose(rng: random.Random, label: str, sentences: int) -> str:
    """Return a review of the given sentiment with the given number of sentences."""
    kind = KINDS[rng.choice(sorted(KINDS))]
    first, used = opinion(rng, kind, label)
    body = [first]
    while len(body) < sentences:
        sentence, parts = extra_sentence(rng, kind, label, last=len(body) == sentences - 1)
        if not parts & used:
            body.append(sentence)
            used |= parts
    # Some reviewers set the scene before giving their verdict.
    if len(body) > 1 and body[1] in FILLER + kind["filler"] and rng.random() < 0.5:
        body[0], body[1] = body[1], body[0]
    return " ".join(body)


def make_reviews(seed: int) -> list[tuple[str, str]]:
    """Return balanced, shuffled, distinct (review, sentiment) pairs."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for label in ("positive", "negative"):
        made = 0
        while made < REVIEWS_PER_LABEL:
            text = compose(rng, label, rng.choice((1, 1, 2, 2, 3)))
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
                made += 1
    rng.shuffle(rows)
    return rows


def make_documents(seed: int) -> list[dict[str, str]]:
    """Return distinct unlabelled review documents of one to six sentences."""
    rng = random.Random(seed)
    seen: set[str] = set()
    documents: list[dict[str, str]] = []
    while len(documents) < DOCUMENT_COUNT:
        text = compose(rng, rng.choice(("positive", "negative")), rng.randint(1, 6))
        if text not in seen:
            seen.add(text)
            documents.append({"id": f"doc-{len(documents) + 1:05d}", "text": text})
    return documents


def write_files(out: Path) -> None:
    """Write reviews.csv and documents.jsonl into out."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "reviews.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["review", "sentiment"])
        writer.writerows(make_reviews(REVIEWS_SEED))
    with open(out / "documents.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for document in make_documents(DOCUMENTS_SEED):
            handle.write(json.dumps(document, ensure_ascii=False) + "\n")


def main() -> None:
    """Parse arguments and write the demo files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output directory.")
    write_files(parser.parse_args().out)


if __name__ == "__main__":
    main()
