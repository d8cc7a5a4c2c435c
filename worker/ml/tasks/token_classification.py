"""Token classification (named-entity recognition): BIO-tagged words in, entity spans out.

Training data is one sentence per row, its words and their BIO/IOB2 tags (a CoNLL column file or
JSON Lines with token and tag lists), checked at upload. A word's tag is learnt and predicted on
its first word piece. Batch inference takes raw text, splits it into words with their character
offsets, and returns the entities it finds as spans of that text; a text longer than the model
takes is tagged in overlapping windows.

torch, transformers and seqeval are imported inside functions so that importing this module stays
cheap for the API, which uses its row schema.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from worker.datafiles import cell_error, check_columns, length_summary, ranked_counts
from worker.errors import PermanentJobError
from worker.ml.data import Examples, check_labels, read_rows, split_examples
from worker.ml.generation import (  # IGNORED labels later pieces of a word
    IGNORED,
    token_loss,
)
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import label_names_of, load_model
from worker.ml.predict import BatchPredictor, effective_max_length, map_batches
from worker.ml.tasks import Untrainable
from worker.ml.training import TrainingSetup, fit
from worker.params import (
    SHARED_PARAMS,
    EvaluateParams,
    FinetuneParams,
)

TASK = "token-classification"
WINDOW_STRIDE = 32  # word pieces shared by consecutive windows of a long text
ROLES = {"tokens": "tokens", "tags": "tags"}  # role -> default column of labelled data
INPUT_ROLES = ("text",)  # batch inference reads one text per row
PARAMS = SHARED_PARAMS  # job kind -> its parameters' model
MODEL_CLASS = "AutoModelForTokenClassification"
TRAINED_HEADS = ("ForTokenClassification",)  # architecture names of models that already do this task
# What the periodic evaluation (eval_steps) reports, main metric first: name -> greater is better.
EVAL_METRICS = {"f1": True, "precision": True, "recall": True, "accuracy": True, "loss": False}
OUTSIDE = "O"
TAG_PATTERN = re.compile(r"^(?:O|([BI])-(\S+))$")
# Words as the predictor splits raw text: runs of word characters (with inner - or '), or one other
# non-space character. Close to how NER corpora such as CoNLL and WNUT are tokenised.
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


# ---- data: schema and validation ---------------------------------------------------------------


class TokenTagRows:
    """Rows of words and their BIO tags, one tag per word; counts tags, entities and sentence lengths."""

    def __init__(self, tokens_column: str = "tokens", tags_column: str = "tags") -> None:
        self.columns = {"tokens": tokens_column, "tags": tags_column}
        self._tags: Counter[str] = Counter()
        self._entities: Counter[str] = Counter()
        self._lengths: Counter[int] = Counter()

    def check_first(self, first: dict) -> None:
        check_columns(first, {"tokens_column": self.columns["tokens"], "tags_column": self.columns["tags"]})

    def check(self, raw: dict, row: int, line: int | None) -> dict[str, Any]:
        tokens_column, tags_column = self.columns["tokens"], self.columns["tags"]
        tokens = _word_list(raw.get(tokens_column), row, line, tokens_column, "tokens")
        tags = [tag.strip() for tag in _word_list(raw.get(tags_column), row, line, tags_column, "tags")]
        if len(tokens) != len(tags):
            raise cell_error(
                "tag_count_mismatch",
                f"has {len(tags)} tags for {len(tokens)} tokens in column '{tokens_column}'; "
                "give exactly one tag per token.",
                row, line, tags_column, tokens=len(tokens), tags=len(tags),
            )
        check_bio(tokens, tags, row, line, tags_column)
        self._tags.update(tags)
        self._entities.update(tag[2:] for tag in tags if tag.startswith("B-"))
        self._lengths[len(tokens)] += 1
        return {tokens_column: tokens, tags_column: tags}

    def summary(self) -> dict[str, Any]:
        return {
            "label_distribution": ranked_counts(self._tags),
            "num_labels": len(self._tags),
            "entity_counts": ranked_counts(self._entities),
            "tokens_per_row": length_summary(self._lengths),
        }


def row_schema(columns: dict[str, str]) -> TokenTagRows:
    return TokenTagRows(columns["tokens"], columns["tags"])


def check_trainable(stats: dict) -> Untrainable | None:
    """Say why data with these upload stats cannot train a tagger, or None if it can."""
    entities = (stats or {}).get("entity_counts")
    if entities is None or entities:
        return None
    return Untrainable(
        "no_entities", "has no entity: every tag is O; tag the entities (B-TYPE, I-TYPE) in at least "
        "some sentences", {"tags": (stats or {}).get("label_distribution", {})},
    )


def _word_list(value, row: int, line: int | None, column: str, what: str) -> list[str]:
    """Return a cell as a list of non-empty strings: a list, a JSON list or whitespace-separated words."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise cell_error(f"bad_{what}", f"holds {text[:40]!r}, which is not a JSON list of {what}.",
                                 row, line, column) from None
        else:
            value = text.split()
    if not isinstance(value, (list, tuple)) or not value:
        raise cell_error(f"bad_{what}", f"has no {what}; give a non-empty list of {what} (one per word).",
                         row, line, column)
    words = []
    for position, item in enumerate(value, 1):
        if not isinstance(item, (str, int, float)) or isinstance(item, bool) or not str(item).strip():
            raise cell_error(f"bad_{what}", f"has an empty or non-text item at position {position}; "
                             f"every one of the {what} must be a non-blank string.", row, line, column,
                             position=position)
        words.append(str(item))
    return words


def check_bio(tokens: list[str], tags: list[str], row: int, line: int | None, column: str) -> None:
    """Refuse tags that are not BIO/IOB2: O, B-TYPE or I-TYPE, an I- only inside an entity of its type."""
    previous = OUTSIDE
    for position, (token, tag) in enumerate(zip(tokens, tags), 1):
        match = TAG_PATTERN.match(tag)
        if match is None:
            raise cell_error(
                "bad_tag", f"has tag {tag!r} at token {position} ({token!r}); tags are O, B-TYPE or "
                "I-TYPE (BIO/IOB2).", row, line, column, position=position, tag=tag)
        if match.group(1) == "I" and previous[2:] != match.group(2):
            raise cell_error(
                "bad_tag", f"has tag {tag!r} at token {position} ({token!r}) after {previous!r}; in BIO "
                f"an entity starts with B-{match.group(2)}.", row, line, column, position=position, tag=tag)
        previous = tag


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """Split raw text into (word, start, end) as the predictor sees it."""
    return [(match.group(), match.start(), match.end()) for match in WORD.finditer(text)]


# ---- model, preprocessing, metrics --------------------------------------------------------------


def load_tagger(model_ref: str, *, label_names: list[str] | None = None):
    model, tokenizer = load_model(model_ref, MODEL_CLASS, "a token classifier", label_names=label_names)
    if not tokenizer.is_fast:
        raise PermanentJobError(
            f"model '{model_ref}' has no fast tokenizer (tokenizer.json); token classification needs one "
            "to map word pieces back to words"
        )
    return model, tokenizer


def _tag_order(tags: set[str]) -> list[str]:
    """O first, then each entity type's B- and I- tags together."""
    return sorted(tags, key=lambda tag: (tag != OUTSIDE, tag[2:], tag[:1]))


def _encode(tokenizer, examples: Examples, tag_ids: dict[str, int], max_length: int):
    from datasets import Dataset

    encoded = tokenizer(examples.texts, is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for index, tags in enumerate(examples.labels):
        previous, row = None, []
        for word in encoded.word_ids(index):
            row.append(IGNORED if word is None or word == previous else tag_ids[tags[word]])
            previous = word
        labels.append(row)
    data = {key: encoded[key] for key in encoded.keys()}
    data["labels"] = labels
    return Dataset.from_dict(data)


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 overall and per type (seqeval, IOB2), plus token accuracy."""
    from seqeval.metrics import accuracy_score, classification_report

    if not gold or len(gold) != len(predicted):
        raise ValueError(f"need equal, non-empty sentence lists (got {len(gold)} and {len(predicted)})")
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    overall = report["micro avg"]
    per_type = {
        name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
               "support": int(v["support"])}
        for name, v in report.items() if not name.endswith(" avg")
    }
    return {
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "f1": float(overall["f1-score"]),
        "f1_macro": float(report["macro avg"]["f1-score"]),
        "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": per_type,
        "support": int(overall["support"]),
        "sentences": len(gold),
    }


def _predict_word_tags(model, tokenizer, sentences: list[list[str]], *, max_length: int, batch_tokens: int,
                       max_batch_size: int, on_batch=None) -> list[list[tuple[str, float]]]:
    """Return (tag, probability) for every word of every sentence, however long the sentence.

    A sentence longer than `max_length` word pieces is cut into overlapping windows (WINDOW_STRIDE
    pieces shared by neighbours). A word seen by several windows takes the prediction of the one
    where it sits farthest from an edge, so it is tagged with as much context on both sides as the
    model's length allows; on a tie the earlier window wins, which also covers a window that starts
    in the middle of a word (the word's first piece is in the window before).
    """
    import torch

    label_names = label_names_of(model)
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length,
                        stride=max(1, min(WINDOW_STRIDE, max_length // 4)), return_overflowing_tokens=True)

    def step(inputs, batch):
        probabilities = torch.softmax(model(**inputs).logits.float(), dim=-1).cpu()
        best, index = probabilities.max(dim=-1)
        windows = []
        for position, window in enumerate(batch):
            word_ids = encoded.word_ids(window)
            content = [piece for piece, word in enumerate(word_ids) if word is not None]
            first, last = (content[0], content[-1]) if content else (0, 0)
            seen, predictions = set(), []
            for piece, word in enumerate(word_ids):
                if word is None or word in seen:
                    continue
                seen.add(word)
                tag = (label_names[int(index[position, piece])], float(best[position, piece]))
                predictions.append((word, min(piece - first, last - piece), tag))
            windows.append(predictions)
        return windows

    windows = map_batches(model, tokenizer, encoded, step=step, batch_tokens=batch_tokens,
                          max_batch_size=max_batch_size, on_batch=on_batch)
    tagged = [[(OUTSIDE, 0.0)] * len(words) for words in sentences]  # a word with no pieces stays O
    centrality = [[-1] * len(words) for words in sentences]
    for sentence, predictions in zip(encoded["overflow_to_sample_mapping"], windows):
        for word, distance_to_edge, tag in predictions:
            if distance_to_edge > centrality[sentence][word]:
                centrality[sentence][word], tagged[sentence][word] = distance_to_edge, tag
    return tagged


# ---- fine-tune and evaluate -----------------------------------------------------------------------


def _read_tagged(path: Path, columns: dict[str, str], what: str) -> Examples:
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload sentences with their tags")
    tokens, tags = columns["tokens"], columns["tags"]
    try:
        return Examples([list(row[tokens]) for row in rows], [list(row[tags]) for row in rows])
    except (KeyError, TypeError):
        raise PermanentJobError(
            f"the {what} dataset has no token and tag lists in columns '{tokens}' and '{tags}': upload it "
            "again with task=token-classification"
        ) from None


def finetune(
    params: FinetuneParams,
    *,
    base_model: str,
    train_path: Path,
    validation_path: Path | None,
    columns: dict[str, str],
    output_dir: Path,
    checkpoint_dir: Path,
    hooks: JobHooks,
) -> dict:
    """Fine-tune a token classifier on tagged sentences, resuming from the newest complete checkpoint."""
    train = _read_tagged(train_path, columns, "train")
    tag_names = _tag_order({tag for tags in train.labels for tag in tags})
    if validation_path is None:
        train, validation = split_examples(train, params.validation_fraction, params.seed)
    else:
        validation = _read_tagged(validation_path, columns, "validation")  # read with train's columns
        check_labels(tag_names, [tag for tags in validation.labels for tag in tags],
                     "the validation dataset has tags the train dataset lacks")

    def setup() -> TrainingSetup:
        from transformers import DataCollatorForTokenClassification

        model, tokenizer = load_tagger(base_model, label_names=tag_names)
        tag_ids = {name: i for i, name in enumerate(tag_names)}
        max_length = effective_max_length(tokenizer, params.max_length)
        return TrainingSetup(model, tokenizer, _encode(tokenizer, train, tag_ids, max_length),
                             DataCollatorForTokenClassification(tokenizer), compute_loss=token_loss,
                             eval_set=_encode(tokenizer, validation, tag_ids, max_length) if params.eval_steps else None,
                             compute_metrics=_step_metrics(tag_names), preprocess_logits=_likeliest_tags)

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=load_tagger, eval_metrics=EVAL_METRICS)
    model, tokenizer = fitted.model, fitted.tokenizer
    model.eval()
    predicted = _predict_word_tags(
        model, tokenizer, validation.texts, max_length=effective_max_length(tokenizer, params.max_length),
        batch_tokens=params.eval_batch_size * params.max_length, max_batch_size=params.eval_batch_size,
        on_batch=progress_reporter(hooks),
    )
    metrics = entity_metrics(validation.labels, [[tag for tag, _ in words] for words in predicted])
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = fitted.summary | {"validation_rows": len(validation.texts)}
    return {"label_names": tag_names, "metrics": metrics, "train": summary}


def _likeliest_tags(logits, labels):
    return logits.argmax(dim=-1)  # the Trainer then keeps a tag id per piece, not a score per tag


def _step_metrics(tag_names: list[str]):
    """Score the Trainer's periodic evaluation: entity metrics over each word's first piece (truncated)."""

    def score(prediction) -> dict:
        gold, predicted = [], []
        for tags, labels in zip(prediction.predictions, prediction.label_ids):
            first_pieces = labels != IGNORED
            gold.append([tag_names[i] for i in labels[first_pieces]])
            predicted.append([tag_names[i] for i in tags[first_pieces]])
        metrics = entity_metrics(gold, predicted)
        return {name: metrics[name] for name in EVAL_METRICS if name != "loss"}

    return score


def evaluate(
    model_dir: str,
    *,
    data_path: Path,
    columns: dict[str, str],
    params: EvaluateParams,
    hooks: JobHooks,
) -> dict:
    """Score a token classifier on tagged sentences: entity-level metrics plus "rows"."""
    examples = _read_tagged(data_path, columns, "evaluation")
    tagger = Predictor(model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
                       max_batch_size=params.batch_size, precision=params.precision)
    check_labels(tagger.label_names, [tag for tags in examples.labels for tag in tags],
                 f"the dataset has tags that model '{model_dir}' does not know")
    predicted = tagger.tag_words(examples.texts, on_batch=progress_reporter(hooks))
    metrics = entity_metrics(examples.labels, [[tag for tag, _ in words] for words in predicted])
    metrics["rows"] = len(examples.texts)
    metrics["dtype"] = tagger.precision
    return metrics


# ---- batch inference -----------------------------------------------------------------------------


class Predictor(BatchPredictor):
    """Find entities in raw text with one loaded token classifier."""

    load = staticmethod(load_tagger)

    def tag_words(self, sentences: list[list[str]], *, on_batch=None) -> list[list[tuple[str, float]]]:
        return _predict_word_tags(self.model, self.tokenizer, sentences, max_length=self.max_length,
                                  batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size,
                                  on_batch=on_batch)

    def predict_chunk(self, rows: list[tuple[int, str]]) -> list[dict]:
        """Return each row's entities (type, text, character span, score), in input order."""
        results: list[dict] = [{"row": row_id, "error": "empty text"} for row_id, _ in rows]
        split = [(i, words_with_offsets(text)) for i, (_, text) in enumerate(rows)
                 if isinstance(text, str) and text.strip()]
        split = [(i, words) for i, words in split if words]
        if not split:
            return results
        tagged = self.tag_words([[word for word, _, _ in words] for _, words in split])
        for (position, words), tags in zip(split, tagged):
            text = rows[position][1]
            results[position] = {"row": rows[position][0], "entities": entity_spans(text, words, tags)}
        return results


def entity_spans(text: str, words: list[tuple[str, int, int]], tags: list[tuple[str, float]]) -> list[dict]:
    """Group tagged words into entities: B-X starts one, I-X continues an X (else starts one), O ends it.

    The span runs from the first word's start to the last word's end; the score is the mean of the
    words' tag probabilities.
    """
    entities: list[dict] = []
    current: dict | None = None
    scores: list[float] = []

    def close() -> None:
        if current is not None:
            current["text"] = text[current["start"]:current["end"]]
            current["score"] = sum(scores) / len(scores)
            entities.append(current)

    for (_, start, end), (tag, score) in zip(words, tags):
        kind = tag[2:] if tag != OUTSIDE else None
        if kind is not None and tag.startswith("I-") and current is not None and current["type"] == kind:
            current["end"] = end
            scores.append(score)
            continue
        close()
        current, scores = (({"type": kind, "start": start, "end": end}, [score]) if kind is not None
                           else (None, []))
    close()
    return [{"type": e["type"], "text": e["text"], "start": e["start"], "end": e["end"], "score": e["score"]}
            for e in entities]


__all__ = ["Predictor", "TokenTagRows", "entity_metrics", "entity_spans", "evaluate", "finetune"]
