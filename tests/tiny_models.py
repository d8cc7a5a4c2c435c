"""Tiny models built on the spot, so tests run offline and fast."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "good great nice lovely excellent wonderful happy fine superb",
    "bad awful terrible horrible poor sad ugly nasty dreadful",
    "the movie was good and the food was great",
    "the service was bad and the room was awful",
    "i liked it a lot, what a nice day!",
    "i hated it, what a terrible day?",
    "this is a plain sentence about nothing in particular 0123456789",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_POSITIONS = 128
# Above what these sentences can fill (about 210 tokens), so training merges every word whole.
VOCAB_SIZE_LIMIT = 300


NER_SENTENCES = [
    "alice bob carol dave erin frank met in paris london berlin rome madrid oslo",
    "new york san diego visited flew from to today yesterday the weather was and",
]


def build_tiny_classifier(path: Path, corpus: list[str] = SENTENCES, vocab_size: int = VOCAB_SIZE_LIMIT) -> Path:
    """Save a tiny BERT classifier (2 labels) and its freshly trained tokenizer under `path`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(corpus, vocab_size)
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


QA_SENTENCES = ["where does who lives works live work in . ?"]


def build_tiny_reader_base(path: Path) -> Path:
    """A tiny BERT whose tokenizer knows the words of the synthetic questions and contexts."""
    return build_tiny_classifier(path, SENTENCES + NER_SENTENCES + QA_SENTENCES, vocab_size=500)


def build_tiny_tagger_base(path: Path) -> Path:
    """A tiny BERT whose tokenizer also knows the words of the synthetic NER sentences (a base to tag with)."""
    return build_tiny_classifier(path, SENTENCES + NER_SENTENCES, vocab_size=500)


TRANSLATIONS = {
    "good": "gut", "bad": "schlecht", "movie": "film", "food": "essen", "the": "der", "was": "war",
    "and": "und", "great": "toll", "day": "tag", "room": "zimmer", "nice": "schoen", "awful": "furchtbar",
    "service": "dienst", "happy": "froh", "sad": "traurig", "i": "ich", "liked": "mochte", "it": "es",
}
SEQ2SEQ_SENTENCES = [" ".join(TRANSLATIONS), " ".join(TRANSLATIONS.values())]


def build_tiny_seq2seq(path: Path, architecture: str = "t5") -> Path:
    """Save a tiny T5- or BART-style encoder-decoder whose tokenizer knows the synthetic translation pairs."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(SENTENCES + SEQ2SEQ_SENTENCES, 500)
    tokenizer.save_pretrained(path)
    pad, start, end = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    torch.manual_seed(0)
    if architecture == "t5":
        config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0,
                          pad_token_id=pad, eos_token_id=end, decoder_start_token_id=pad)
        T5ForConditionalGeneration(config).save_pretrained(path)
    else:
        config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=MAX_POSITIONS, pad_token_id=pad,
                            bos_token_id=start, eos_token_id=end, decoder_start_token_id=end,
                            forced_eos_token_id=end)
        BartForConditionalGeneration(config).save_pretrained(path)
    return path


def build_tiny_gpt2(path: Path) -> Path:
    """Save a tiny GPT-2-style decoder whose tokenizer knows the synthetic sentences and translation pairs."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(SENTENCES + SEQ2SEQ_SENTENCES, 500)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def build_tiny_encoder(path: Path) -> Path:
    """A tiny BERT encoder whose tokenizer knows the synthetic translation pairs (to warm-start BERT2BERT)."""
    return build_tiny_classifier(path, SENTENCES + SEQ2SEQ_SENTENCES, vocab_size=500)


def _build_tokenizer(corpus: list[str], vocab_size: int, **options):
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(vocab=_trained_vocab(corpus, vocab_size), unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = _normalizer(), _pre_tokenizer()
    backend.decoder = decoders.WordPiece()
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
        **options,
    )


def _trained_vocab(corpus: list[str], vocab_size: int) -> dict[str, int]:
    """Train WordPiece on the corpus, then give tokens stable ids.

    The trainer breaks ties between equally frequent merges in hash order, so ids (and a few
    intermediate pieces) change from run to run. Training until every word is whole and numbering
    specials, then corpus words, then the rest, makes the ids of every corpus word the same in
    each run, so a test that trains the tiny model learns the same way every time.
    """
    from tokenizers import Tokenizer, models, trainers

    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer, trained.pre_tokenizer = _normalizer(), _pre_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"),
        show_progress=False,
    )
    trained.train_from_iterator(corpus, trainer=trainer)
    words = {
        word
        for sentence in corpus
        for word, _ in _pre_tokenizer().pre_tokenize_str(_normalizer().normalize_str(sentence))
    }

    def rank(token: str) -> tuple[int, str]:
        if token in SPECIAL_TOKENS:
            return (0, f"{SPECIAL_TOKENS.index(token):03d}")
        return (1 if token in words else 2, token)

    return {token: i for i, token in enumerate(sorted(trained.get_vocab(), key=rank))}


def _normalizer():
    from tokenizers import normalizers

    return normalizers.BertNormalizer(lowercase=True)


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.BertPreTokenizer()


def build_tiny_distilbert_classifier(path: Path, corpus: list[str] = SENTENCES) -> Path:
    """Save a tiny DistilBERT classifier (2 labels) and its freshly trained tokenizer under `path`.

    Its head reads the [CLS] state through a ReLU layer, where BERT's goes through a tanh pooler:
    at this size that pooler tends to saturate on one of several independent labels (multi-label
    data) and never learns the others.
    """
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(corpus, VOCAB_SIZE_LIMIT, model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(path)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=MAX_POSITIONS, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path
