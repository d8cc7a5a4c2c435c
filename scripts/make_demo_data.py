"""Write the demo datasets in nightshift/demo_data/ from the project's own templates and phrase lists.

The reviews are meant to read like real customer reviews, so that the demo's fine-tune has
something to learn and something to get wrong:

* lengths from a few words to several sentences, with different openings, first-person
  stories, comparisons, questions, exclamations and, now and then, lowercase informal typing;
* negation ("not bad at all", "I wouldn't say it's great"), hedges ("I guess", "so far") and
  intensifiers ("really", "absolutely");
* mixed reviews, with praise and complaints, labelled by their overall verdict;
* sarcastic reviews ("Great, another charger that died in a week.") and tongue-in-cheek praise
  ("My only complaint is that I ate far too much."), labelled by what they really mean;
* about 3% deliberately mislabelled rows (MISLABELLED_PER_LABEL of each label swapped), as in
  real labelled data, so a perfect score on them would mean the model learnt the noise.

`documents.jsonl` holds unlabelled reviews from the same generator, one to several sentences.

Every sentence comes from the lists below, written for this project, so the files carry no
third-party text. Output is deterministic: the same seeds always write the same bytes.

    python scripts/make_demo_data.py [--out nightshift/demo_data]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

REVIEWS_SEED = 20240611
DOCUMENTS_SEED = 7321
REVIEWS_PER_LABEL = 300
MISLABELLED_PER_LABEL = 9  # 18 of 600 rows (3%) carry the wrong label on purpose
DOCUMENT_COUNT = 2000
LABELS = ("positive", "negative")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "nightshift" / "demo_data"

Kind = dict[str, list]

# Each kind of thing reviewed. subjects: what is reviewed; aspects: (part, praise, complaints);
# others: what it is compared with; context: neutral scene-setting; events: things that went
# wrong, told as a past-tense clause (for sarcasm); lemons: a bad one of its kind as a noun
# phrase ("Great, another ..."); chores: what you must enjoy to like a bad one; perks: a
# "complaint" that is really praise.
KINDS: dict[str, Kind] = {
    "product": {
        "subjects": [
            "this blender", "the wireless headset", "the robot vacuum", "this hiking backpack",
            "the electric kettle", "the standing desk", "this phone case", "the air fryer",
            "this desk lamp", "the coffee grinder", "this phone charger", "the electric toothbrush",
        ],
        "aspects": [
            ("the battery", ["lasts for days", "charges in no time"],
             ["dies before lunch", "takes all night to charge"]),
            ("the build quality", ["is really solid", "feels premium"],
             ["feels cheap and creaky", "is flimsy at best"]),
            ("the instructions", ["were clear and short", "made setup a five-minute job"],
             ["were useless", "seemed to describe a different model"]),
            ("the price", ["was fair for what you get", "was lower than I expected"],
             ["was way too high for what it is", "keeps creeping up"]),
            ("delivery", ["was quick", "came a day early"],
             ["took three weeks", "came with a dented box"]),
            ("it", ["is quiet enough to use at night", "looks great on the counter"],
             ["is loud enough to wake the whole house", "smells of burnt plastic"]),
        ],
        "others": ["my old one", "the cheaper brand", "the one my sister has", "the previous model"],
        "context": [
            "I ordered it online and it came in a plain cardboard box.",
            "I replaced an older model with it.", "It was a birthday present from my brother.",
            "I've had it for about two months now.", "Bought it on sale.",
        ],
        "events": [
            "it stopped working the day after the return window closed",
            "the handle snapped off on day two", "the lid cracked the first time I used it",
            "it started making a grinding noise after a week",
            "the cable frayed within a month",
        ],
        "lemons": [
            "charger that died in a week", "kettle that leaks all over the counter",
            "headset that only works in one ear", "backpack whose zip broke on the first hike",
            "vacuum that gets stuck under every chair",
        ],
        "chores": ["cleaning up puddles", "reading error codes", "sending things back"],
        "perks": [
            "my family keeps borrowing it", "it makes everything else I own look shabby",
            "I use it far more than I planned to",
        ],
    },
    "app": {
        "subjects": [
            "the budgeting app", "this meditation app", "the food delivery app",
            "the new photo editor", "this language learning app", "the banking app",
            "this weather app", "the fitness tracker app",
        ],
        "aspects": [
            ("the interface", ["is clean and easy to learn", "just makes sense"],
             ["is a confusing mess", "hides everything behind three menus"]),
            ("syncing", ["works instantly between my phone and laptop", "has never failed me"],
             ["fails half the time", "keeps duplicating my entries"]),
            ("the notifications", ["are useful and not too frequent", "can be tuned exactly how I like"],
             ["never stop", "are mostly adverts"]),
            ("support", ["answered within the hour", "actually fixed my problem"],
             ["sent me a canned reply", "never answered at all"]),
            ("the latest update", ["made it even faster", "added the one feature I wanted"],
             ["broke the login", "made it slow as treacle"]),
            ("it", ["barely touches my battery", "works fine offline"],
             ["drains my battery", "crashes every time I open it"]),
        ],
        "others": ["the app I used before", "the free alternatives", "the old version", "the website"],
        "context": [
            "I use it mostly on my phone.", "I installed it after seeing an advert.",
            "I tried the free version before paying for a subscription.",
            "Been using it every day since January.",
        ],
        "events": [
            "the update wiped all my settings", "it logged me out five times in one afternoon",
            "it charged me twice for the same month", "my streak vanished overnight",
            "the app froze right when I needed to pay",
        ],
        "lemons": [
            "update that deletes my data", "app that needs a restart every hour",
            "subscription that renews without asking", "login screen that forgets my password",
        ],
        "chores": [
            "reinstalling things", "typing your password ten times a day", "waiting on loading screens",
        ],
        "perks": [
            "I check it way too often now", "my friends are sick of me recommending it",
            "I can't go back to my old spreadsheet",
        ],
    },
    "restaurant": {
        "subjects": [
            "the ramen place on Fifth Street", "this little taco stand",
            "the Italian restaurant by the station", "the vegan cafe downtown",
            "the sushi bar near my office", "the bakery on the corner", "the new burger joint",
            "the Thai place on Mill Lane",
        ],
        "aspects": [
            ("the food", ["was fresh and full of flavor", "was cooked perfectly"],
             ["was bland and lukewarm", "tasted like it had been microwaved"]),
            ("the staff", ["were warm and attentive", "remembered us from last time"],
             ["ignored us for twenty minutes", "were rude when we asked for water"]),
            ("the portions", ["were generous", "left us too full for dessert"],
             ["were tiny for the price", "would not feed a child"]),
            ("the wait", ["was short even on a Friday", "was barely ten minutes"],
             ["was over an hour", "never seemed to end"]),
            ("the place", ["is cosy and spotless", "has a lovely relaxed feel"],
             ["was noisy and sticky", "smelled of old fryer oil"]),
            ("the bill", ["was very reasonable", "was lower than I expected"],
             ["included dishes we never ordered", "was eye-watering"]),
        ],
        "others": [
            "the place across the street", "our usual spot", "most places in town", "the chain down the road",
        ],
        "context": [
            "We went there for a late lunch.", "We booked a table for four on a Friday night.",
            "I ordered the daily special.", "Came here for my mum's birthday.",
            "We got takeaway this time.",
        ],
        "events": [
            "our food arrived cold after an hour", "they forgot half our order",
            "the waiter spilled soup on my jacket and walked off",
            "they gave our table away while we were parking",
            "we found a hair in the noodles",
        ],
        "lemons": [
            "dinner that took two hours to arrive", "pizza with a soggy middle",
            "cafe that runs out of coffee by ten", "burger that was more bun than burger",
        ],
        "chores": ["waiting an hour for a cold plate", "shouting over the music", "paying for water"],
        "perks": [
            "I ate far too much", "every other ramen now tastes sad to me",
            "I can't stop thinking about the dumplings",
        ],
    },
    "shop": {
        "subjects": [
            "the hardware store on Elm Road", "this online bookshop", "the garden center",
            "the bike shop near the park", "the shoe store at the mall", "the corner grocery",
            "this second-hand furniture shop",
        ],
        "aspects": [
            ("the staff", ["gave genuinely helpful advice", "went out of their way to help"],
             ["could not answer a single question", "followed me around like I was a thief"]),
            ("the selection", ["is huge", "has things I couldn't find anywhere else"],
             ["is tiny and half of it is out of stock", "hasn't changed in years"]),
            ("the prices", ["are fair", "beat the big chains"],
             ["are daylight robbery", "are double what they are online"]),
            ("returns", ["were painless", "took two minutes at the counter"],
             ["were refused for a faulty item", "took six weeks to process"]),
            ("my order", ["arrived well packed", "was ready the same afternoon"],
             ["arrived soaked", "was missing two items"]),
        ],
        "others": ["the big chain stores", "the shop I used to go to", "ordering online", "the market"],
        "context": [
            "I stopped by on my way home from work.", "I was looking for a gift for my neighbor.",
            "I have shopped there a few times over the years.", "Popped in on a Saturday morning.",
        ],
        "events": [
            "they sold me the wrong part and wouldn't swap it",
            "the card machine was broken, again", "my order arrived with the wrong book in it",
            "the tyre they fitted went flat on the ride home",
        ],
        "lemons": [
            "shop where nobody knows where anything is", "order that shows up a month late",
            "store credit I never asked for", "sale where nothing is actually on sale",
        ],
        "chores": ["queuing for half an hour", "being ignored", "driving back to return things"],
        "perks": [
            "I always leave with more than I came for", "my bookshelf is now overflowing",
            "I've run out of excuses not to go back",
        ],
    },
    "service": {
        "subjects": [
            "the moving company we hired", "the hair salon on Oak Avenue", "the car wash on Route 9",
            "the dry cleaner near my flat", "the plumber we called", "the cleaning service",
            "the garage on Station Road",
        ],
        "aspects": [
            ("they", ["showed up on time and finished early", "kept me posted the whole way"],
             ["showed up two hours late", "never returned my calls"]),
            ("the work", ["was careful and tidy", "was done properly the first time"],
             ["was left half finished", "had to be redone by someone else"]),
            ("the price", ["matched the quote exactly", "was very fair"],
             ["was double the quote", "came with charges nobody explained"]),
            ("the booking", ["took two minutes online", "was easy to change"],
             ["was a nightmare", "got lost twice"]),
        ],
        "others": [
            "the last company we used", "the big national chains", "doing it myself", "the guy we had before",
        ],
        "context": [
            "We booked them through their website.",
            "It was the first time I had used a service like this.",
            "They were recommended by a coworker.", "We needed them at short notice.",
        ],
        "events": [
            "they scratched the table and denied it", "my shirt came back with a new stain",
            "the leak they fixed came back the next morning",
            "they turned up on the wrong day and charged a callout fee",
        ],
        "lemons": [
            "plumber who makes the leak worse", "haircut I'll be hiding under a hat",
            "car wash that leaves the car dirtier", "quote that doubles on the day",
        ],
        "chores": ["chasing people for updates", "redoing the job yourself", "waiting in all day"],
        "perks": [
            "they've spoiled me for anyone else", "my neighbours keep asking for their number",
            "I now look forward to haircuts",
        ],
    },
    "hotel": {
        "subjects": [
            "the hotel by the harbour", "this guesthouse", "the airport hotel",
            "the hostel near the old town", "the holiday cottage we rented",
        ],
        "aspects": [
            ("the room", ["was spotless and bigger than the photos", "had a gorgeous view"],
             ["was smaller than a cupboard", "smelled damp"]),
            ("the bed", ["was incredibly comfortable", "was the best sleep I've had in months"],
             ["sagged in the middle", "creaked every time I moved"]),
            ("breakfast", ["was fresh and plentiful", "was worth getting up for"],
             ["was stale pastries and weak coffee", "ran out by eight"]),
            ("the front desk", ["sorted everything with a smile", "let us check in early"],
             ["lost our booking", "was never staffed"]),
            ("the location", ["is perfect for walking everywhere", "is quiet but close to everything"],
             ["is next to a nightclub", "is miles from anything"]),
        ],
        "others": [
            "the place we stayed last year", "the big chain hotels", "the photos online",
            "most hotels at this price",
        ],
        "context": [
            "We stayed three nights in August.", "It was a work trip, so just one night.",
            "We booked last minute.", "Came for a wedding nearby.",
        ],
        "events": [
            "the shower ran cold every single morning", "housekeeping walked in on us twice",
            "the fire alarm went off at 3am for no reason", "our room key stopped working at midnight",
        ],
        "lemons": [
            "sea view that turns out to be a car park", "mattress that feels like a gravel path",
            "room with a heater stuck on full", "minibar charge for things we never touched",
        ],
        "chores": ["sleeping with earplugs", "bringing your own towels", "arguing at reception"],
        "perks": [
            "I didn't want to leave", "every other hotel will now disappoint me",
            "we've already booked again",
        ],
    },
}

# Verdicts on the subject, by sentiment: adjectives (take an intensifier or hedge) and verb phrases.
ADJECTIVES = {
    "positive": ["great", "excellent", "brilliant", "solid", "lovely", "fantastic", "reliable",
                 "superb", "impressive", "good value", "a real gem", "a lifesaver"],
    "negative": ["awful", "terrible", "useless", "disappointing", "mediocre", "overpriced",
                 "unreliable", "a total joke", "an absolute mess", "a rip-off"],
}
STRONG = ["really", "absolutely", "seriously", "incredibly", "genuinely", "so", "truly"]
MILD = ["pretty", "fairly", "quite", "kind of", "mostly", "honestly"]
VERB_PHRASES = {
    "positive": [
        "exceeded my expectations", "was worth every penny", "made my week",
        "turned out to be a great choice", "won me over completely", "got everything right",
        "has become one of my favorites", "was a pleasant surprise", "did exactly what I hoped",
        "delivered far more than I paid for",
    ],
    "negative": [
        "was a complete waste of money", "fell far short of what was advertised", "let me down badly",
        "was frustrating from start to finish", "gave me nothing but headaches",
        "made a simple thing needlessly difficult", "made me wish I had gone elsewhere",
        "got almost everything wrong", "wasted hours of my time", "was the worst money I spent this year",
    ],
}
FEELINGS = {
    "positive": ["I love", "I really like", "I'm very happy with", "I'm impressed by", "I'd recommend"],
    "negative": ["I regret choosing", "I'm fed up with", "I'm really disappointed with",
                 "I can't recommend", "I wouldn't trust"],
}
OPENINGS = ["", "", "", "Honestly, ", "I have to say ", "All things considered, ", "So far ",
            "Well, ", "Long story short, ", "In my opinion ", "I think "]

# Negation: the words of one sentiment saying the other.
NEGATED = {
    "positive": [
        "Not bad at all.", "Never disappointed.", "I can't fault it.", "No complaints whatsoever.",
        "Couldn't be happier.", "Not a single problem so far.", "I honestly have nothing bad to say.",
        "Can't complain!", "No regrets.", "It never lets me down.", "I was wrong to doubt it.",
        "Hard to beat.", "Not cheap, but not once have I regretted it.",
    ],
    "negative": [
        "I wouldn't say it's great.", "Not worth it.", "Not impressed.", "Nothing special.",
        "I can't say I'd recommend it.", "It didn't live up to the hype.", "Not what I was promised.",
        "Never again.", "Not good enough, sorry.", "I didn't enjoy a single minute of it.",
        "It isn't terrible, but it isn't good either.", "Definitely not the bargain it claims to be.",
    ],
}
NEGATED_ABOUT = {
    "positive": ["{S} is not bad at all.", "I can't think of a single thing wrong with {s}.",
                 "{S} has never once disappointed me.", "I wasn't expecting much from {s}, but wow."],
    "negative": ["I wouldn't say {s} is great.", "{S} is not worth the hype.",
                 "I can't say {s} impressed me.", "{S} is nowhere near as good as people say."],
}
COMPARISONS = {
    "positive": ["Way better than {o}.", "Much nicer than {o}, and cheaper too.",
                 "It beats {o} hands down.", "I'd pick it over {o} any day."],
    "negative": ["Not a patch on {o}.", "Worse than {o} in every way.",
                 "I should have stuck with {o}.", "I'd take {o} over this any day."],
}
QUESTIONS = {
    "positive": ["Why didn't I try this years ago?", "What more could you ask for?",
                 "Where has this been all my life?", "Is it perfect? Pretty close.",
                 "Would I go back? In a heartbeat."],
    "negative": ["Did anyone actually test this?", "How is this allowed to be sold?",
                 "Why is it so hard to get the basics right?", "Is it worth the money? No.",
                 "Who thought this was a good idea?",
                 "Would I go back? Not a chance."],
}
EXCLAMATIONS = {
    "positive": ["Love it!", "Wow, just wow!", "So glad I found it!", "What a find!", "Amazing!"],
    "negative": ["Ugh.", "What a letdown!", "Absolutely not!", "Avoid!",
                 "Unbelievable, and not in a good way."],
}
CLOSERS = {
    "positive": ["Five stars from me.", "Would recommend without hesitation.", "I'll definitely be back.",
                 "Highly recommended!", "10/10.", "Would buy again.", "Thanks, guys!",
                 "Already telling my friends about it."],
    "negative": ["One star, and that's generous.", "I asked for a refund.", "Avoid if you can.",
                 "Save your money.", "I won't be returning.", "Switched to a competitor.",
                 "Returned it.", "Do better."],
}
# Whole reviews of a few words.
SHORT = {
    "positive": ["Love it", "Great value", "Does the job", "Perfect", "Solid purchase",
                 "Exactly as described", "Happy customer", "Would buy again", "Really good",
                 "Five stars", "No complaints", "Works great", "Brilliant service",
                 "Better than expected", "Top notch", "Very pleased"],
    "negative": ["Junk", "Don't bother", "Waste of money", "Not as described", "Very disappointed",
                 "Broke in a week", "Terrible service", "One star", "Total rip-off", "Never again",
                 "Avoid", "Rubbish", "Worse than expected", "Not worth it", "Fell apart", "Awful"],
}
# Lukewarm verdicts: close calls either way.
LUKEWARM = {
    "positive": ["It's fine. Does the job, nothing more.", "Decent enough for the price, I suppose.",
                 "Okay overall, I'd probably use it again.", "Not amazing, but it does what it says.",
                 "It's alright. Better than I feared."],
    "negative": ["It's okay, I guess, but I expected more.", "Meh. It works, sort of.",
                 "Fine for a week, then not so much.", "Not awful, just not worth the money.",
                 "It's alright, but I won't be buying it again."],
}
# Mixed reviews: how the overall verdict follows the points on both sides.
OVERALL = {
    "positive": ["Overall I'd buy it again.", "Still, I'm happy with it.", "Worth it overall.",
                 "On balance, a good choice.", "But I'd still recommend it.", "Four stars."],
    "negative": ["Overall, not worth it.", "Still returning it.", "I wouldn't go again.",
                 "On balance, a disappointment.", "Not enough to save it, though.", "Two stars."],
}
MIXED_TEMPLATES = [
    "{Bad}, but {good}.",
    "{Good}, although {bad}.",
    "{Bad}. On the other hand, {good}.",
    "Pros: {good}. Cons: {bad}.",
    "I'll be honest, {bad}. That said, {good}.",
]
SARCASM = [
    "Great, another {lemon}.", "Oh good, {event}. Exactly what I paid for.",
    "Wow. {Event}. Truly world class.", "Love how {event}. Really adds to the experience.",
    "{Event}. Brilliant. Just brilliant.", "Perfect, if you enjoy {chore}.",
    "Nothing says quality like a {lemon}.", "{Event}. Thanks so much, really.",
]
FAKE_COMPLAINTS = [
    "My only complaint is that {perk}.", "The worst part? {Perk}.", "Fair warning: {perk}.",
    "Big problem: {perk}. Send help.", "I have one issue with {s}: {perk}.",
]
FILLER = [
    "A friend recommended it to me.", "I found it through an online search.",
    "This is my first review in years.", "I compared a few options before deciding.",
    "It was my partner's idea to try it.", "I'm writing this a week later.",
    "Long time reader, first time reviewer.", "Edit: still the same after a month.",
]
INFORMAL_TAGS = [" lol", " tbh", " imo", "!!", " :)", "..."]


def capitalize(text: str) -> str:
    """Return text with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def fill(template: str, **parts: str) -> str:
    """Fill a template's {part} slots, and {Part} slots with the same part capitalized."""
    capitalized = {capitalize(key): capitalize(value) for key, value in parts.items()}
    return template.format(**parts, **capitalized)


def aspect_clause(rng: random.Random, kind: Kind, label: str, exclude: str = "") -> tuple[str, str]:
    """Return (part, clause) praising or criticising one part of the kind, e.g. 'the food was cold'."""
    part, praise, complaints = rng.choice([a for a in kind["aspects"] if a[0] != exclude])
    return part, f"{part} {rng.choice(praise if label == 'positive' else complaints)}"


def verdict(rng: random.Random, subject: str, label: str) -> str:
    """Return a sentence giving the overall verdict on the subject."""
    roll = rng.random()
    if roll < 0.35:
        adjective = rng.choice(ADJECTIVES[label])
        degree = "" if adjective.startswith(("a ", "an ")) else rng.choice(STRONG + MILD + ["", ""])
        sentence = f"{subject} is {degree + ' ' if degree else ''}{adjective}."
    elif roll < 0.7:
        sentence = f"{subject} {rng.choice(VERB_PHRASES[label])}."
    elif roll < 0.85:
        return f"{rng.choice(FEELINGS[label])} {subject}."
    else:
        return fill(rng.choice(NEGATED_ABOUT[label]), s=subject)
    opening = rng.choice(OPENINGS)
    return opening + sentence if opening else capitalize(sentence)


def aspect_sentence(rng: random.Random, kind: Kind, label: str) -> str:
    """Return a sentence on one part of the kind, now and then hedged."""
    _, clause = aspect_clause(rng, kind, label)
    hedge = rng.choice(["", "", "", "", "So far ", "I think ", "Honestly, ", "Apparently "])
    return f"{hedge}{clause}." if hedge else f"{capitalize(clause)}."


def remark(rng: random.Random, kind: Kind, label: str) -> str:
    """Return one more sentence of the given sentiment: a detail, comparison, question and so on."""
    makers: list[Callable[[], str]] = [
        lambda: aspect_sentence(rng, kind, label),
        lambda: aspect_sentence(rng, kind, label),
        lambda: rng.choice(NEGATED[label]),
        lambda: fill(rng.choice(COMPARISONS[label]), o=rng.choice(kind["others"])),
        lambda: rng.choice(QUESTIONS[label]),
        lambda: rng.choice(EXCLAMATIONS[label]),
        lambda: rng.choice(kind["context"] + FILLER),
    ]
    return rng.choice(makers)()


def plain_review(rng: random.Random, kind: Kind, label: str, sentences: int) -> list[str]:
    """Return sentences that all lean one way: a verdict among details, context and remarks."""
    subject = rng.choice(kind["subjects"])
    body = [verdict(rng, subject, label)]
    while len(body) < sentences:
        sentence = remark(rng, kind, label)
        if sentence in body:
            continue
        # Most reviewers lead with their verdict; some set the scene or give details first.
        where = rng.randint(0, len(body)) if rng.random() < 0.3 else len(body)
        body.insert(where, sentence)
    if sentences > 1 and rng.random() < 0.4:
        body.append(rng.choice(CLOSERS[label]))
    return body


def mixed_review(rng: random.Random, kind: Kind, label: str, sentences: int) -> list[str]:
    """Return a review with a point on each side, labelled by the verdict it ends on."""
    other = "negative" if label == "positive" else "positive"
    part, own = aspect_clause(rng, kind, label)
    _, opposite = aspect_clause(rng, kind, other, exclude=part)
    good, bad = (own, opposite) if label == "positive" else (opposite, own)
    body = [fill(rng.choice(MIXED_TEMPLATES), good=good, bad=bad)]
    if sentences > 2:
        body.insert(0, rng.choice(kind["context"] + FILLER))
    body.append(rng.choice(OVERALL[label]) if rng.random() < 0.75 else rng.choice(CLOSERS[label]))
    return body


def sarcastic_review(rng: random.Random, kind: Kind, label: str, sentences: int) -> list[str]:
    """Return a review whose words say the opposite of what it means (sarcasm or mock complaint)."""
    subject = rng.choice(kind["subjects"])
    if label == "negative":
        body = [fill(rng.choice(SARCASM), lemon=rng.choice(kind["lemons"]),
                     event=rng.choice(kind["events"]), chore=rng.choice(kind["chores"]), s=subject)]
    else:
        body = [fill(rng.choice(FAKE_COMPLAINTS), perk=rng.choice(kind["perks"]), s=subject)]
    if sentences > 1 and rng.random() < 0.4:
        body.insert(0, verdict(rng, subject, label))
    if sentences > 2:
        body.append(rng.choice(CLOSERS[label]))
    return body


def short_review(rng: random.Random, label: str) -> list[str]:
    """Return a review of a few words."""
    text = rng.choice(SHORT[label] if rng.random() < 0.7 else NEGATED[label] + LUKEWARM[label])
    return [text if text[-1] in ".!?" else text + rng.choice([".", "!", "", "."])]


def informal(rng: random.Random, text: str) -> str:
    """Return the text as typed in a hurry: lower case, sparse punctuation, a tag at the end."""
    text = text.lower().replace("i'm", "im").replace("don't", "dont").rstrip(".")
    return text + rng.choice(INFORMAL_TAGS + ["", ""])


def compose(rng: random.Random, label: str, sentences: int) -> str:
    """Return a review that means the given sentiment, in about the given number of sentences."""
    kind = KINDS[rng.choice(sorted(KINDS))]
    style = rng.random()
    if sentences == 1 and style < 0.3:
        body = short_review(rng, label)
    elif style < 0.18:
        body = mixed_review(rng, kind, label, sentences)
    elif style < 0.28:
        body = sarcastic_review(rng, kind, label, sentences)
    elif style < 0.32:
        body = [rng.choice(LUKEWARM[label])]
    else:
        body = plain_review(rng, kind, label, sentences)
    text = " ".join(body)
    return informal(rng, text) if rng.random() < 0.12 else text


def review_length(rng: random.Random) -> int:
    """Return how many sentences a review gets: mostly one to three, now and then up to five."""
    return rng.choice((1, 1, 1, 2, 2, 2, 3, 3, 4, 5))


def mislabel(rng: random.Random, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Swap the labels of MISLABELLED_PER_LABEL rows of each label, keeping the counts balanced."""
    swapped = {"positive": "negative", "negative": "positive"}
    picked = {
        i
        for label in LABELS
        for i in rng.sample([i for i, row in enumerate(rows) if row[1] == label], MISLABELLED_PER_LABEL)
    }
    return [(text, swapped[label] if i in picked else label) for i, (text, label) in enumerate(rows)]


def make_reviews(seed: int) -> list[tuple[str, str]]:
    """Return balanced, shuffled, distinct (review, sentiment) pairs, a few of them mislabelled."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for label in LABELS:
        made = 0
        while made < REVIEWS_PER_LABEL:
            text = compose(rng, label, review_length(rng))
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
                made += 1
    rng.shuffle(rows)
    return mislabel(rng, rows)


def make_documents(seed: int) -> list[dict[str, str]]:
    """Return distinct unlabelled review documents of one to six sentences."""
    rng = random.Random(seed)
    seen: set[str] = set()
    documents: list[dict[str, str]] = []
    while len(documents) < DOCUMENT_COUNT:
        text = compose(rng, rng.choice(LABELS), rng.randint(1, 6))
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
        documents = make_documents(DOCUMENTS_SEED)
        handle.writelines(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)


def main() -> None:
    """Parse arguments and write the demo files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output directory.")
    write_files(parser.parse_args().out)


if __name__ == "__main__":
    main()
