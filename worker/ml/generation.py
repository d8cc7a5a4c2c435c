"""Generating text in length-sorted batches, for sequence-to-sequence and decoder-only models."""

from __future__ import annotations

from worker.ml.predict import map_batches
from worker.params import GenerationOptions

# A token-level loss that treats every position the same way: used by the generating tasks and NER.
IGNORED = -100


def token_loss(outputs, labels, num_items_in_batch=None):
    """Mean cross-entropy over the labelled positions of the whole accumulated batch.

    Left to the model, transformers 5 adds up each micro-batch's mean without dividing when the
    model's forward takes **kwargs, so loss and gradients grew with gradient_accumulation_steps.
    Logits and labels are aligned (seq2seq and token classification; shift first for causal LMs).
    """
    import torch.nn.functional as F

    logits = outputs.logits.float().flatten(0, 1)
    labels = labels.flatten()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels, ignore_index=IGNORED)
    return F.cross_entropy(logits, labels, ignore_index=IGNORED, reduction="sum") / num_items_in_batch


def generation_kwargs(options: GenerationOptions, tokenizer) -> dict:
    """Return `model.generate` keyword arguments for the options."""
    kwargs = dict(max_new_tokens=options.max_new_tokens, num_beams=options.num_beams,
                  do_sample=options.do_sample, repetition_penalty=options.repetition_penalty,
                  pad_token_id=tokenizer.pad_token_id)
    if options.num_beams > 1:
        kwargs["length_penalty"] = options.length_penalty
    if options.do_sample:
        kwargs.update(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)
    return kwargs


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Cut `text` at the first occurrence of any stop string."""
    cut = min((index for index in (text.find(s) for s in stop) if index >= 0), default=len(text))
    return text[:cut]


def generate_texts(model, tokenizer, texts: list[str], options: GenerationOptions, *, max_length: int,
                   batch_tokens: int, max_batch_size: int, on_batch=None) -> list[str]:
    """Generate one output per input text, in input order.

    Decoder-only models continue their input, so what they return is cut after it (they are padded
    on the left for that); encoder-decoder models return only the output.
    """
    from transformers import set_seed

    set_seed(options.seed)
    decoder_only = not model.config.is_encoder_decoder
    if decoder_only:
        # A prompt is the start of a text: no end-of-text marker after it, a start marker before it.
        tokenizer.padding_side = "left"
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=False)
        if tokenizer.bos_token_id is not None:
            encoded["input_ids"] = [[tokenizer.bos_token_id, *ids] for ids in encoded["input_ids"]]
            encoded["attention_mask"] = [[1, *mask] for mask in encoded["attention_mask"]]
    else:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    kwargs = generation_kwargs(options, tokenizer)

    def step(inputs, _batch):
        output = model.generate(**inputs, **kwargs)
        if decoder_only:
            output = output[:, inputs["input_ids"].shape[1]:]
        return [cut_at_stop(text, options.stop).strip()
                for text in tokenizer.batch_decode(output, skip_special_tokens=True)]

    return map_batches(model, tokenizer, encoded, step=step, batch_tokens=batch_tokens,
                       max_batch_size=max_batch_size, on_batch=on_batch)
