"""Typed, validated parameters for each job kind.

Validated once at submit time by the API, stored as JSON on the job row and re-read by the
worker with the same models, so both sides agree on defaults and ranges.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=500,
        description="A registered model name (optionally `name:version`), a local directory "
        "or a hub id of a model with a standard architecture.",
    ),
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraOptions(_Params):
    """LoRA adapters (the peft library): low-rank updates of chosen linear layers, the base model fixed."""

    r: int = Field(default=8, ge=1, le=1024, description="Rank of each low-rank update.")
    alpha: float = Field(default=16.0, gt=0, le=10_000, description="Scaling: updates are multiplied by alpha / r.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.]+$")]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="Names of the linear layers that get adapters (the last part of their module name, e.g. query, "
                    "value). Default: the attention's query and value projections, found in the model (BERT query/value, "
                    "DistilBERT q_lin/v_lin, GPT-2 c_attn, T5 q/v, BART and Llama q_proj/v_proj).",
    )
    train_head: bool = Field(
        default=True, description="Also train (and store with the adapter) the task's head: a classifier's, a "
                                  "tagger's or a reader's output layer. Language models have none to train.",
    )


class FinetuneParams(_Params):
    """Hyperparameters of a fine-tune (every task); defaults suit a small BERT-style encoder."""

    base_model: ModelRef
    train_dataset_id: int = Field(description="Labelled dataset uploaded for the job's task.")
    validation_dataset_id: int | None = Field(
        default=None, description="Labelled dataset used for evaluation; else a split of train."
    )
    validation_fraction: float = Field(
        default=0.1, gt=0.0, lt=0.5, description="Share of train held out when no validation dataset."
    )
    model_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Registry name of the trained model; a new version is added on each run.",
    )
    epochs: float = Field(default=3.0, gt=0, le=100, description="Training epochs.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Overrides epochs.")
    learning_rate: float = Field(default=5e-5, gt=0, le=1.0)
    batch_size: int = Field(default=16, ge=1, le=1024, description="Per-device train batch size.")
    eval_batch_size: int = Field(default=64, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    max_length: int = Field(default=128, ge=8, le=8192, description="Tokens per example.")
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=0.5)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    logging_steps: int = Field(default=10, ge=1, le=100_000, description="Loss/LR event cadence.")
    eval_steps: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Evaluate every N steps (else at the end)."
    )
    save_steps: int = Field(default=200, ge=1, le=1_000_000, description="Checkpoint every N steps.")
    save_minutes: float = Field(
        default=10.0, gt=0, le=24 * 60, description="Checkpoint at least this often (compute minutes)."
    )
    freeze_base: bool = Field(default=False, description="Train only the task's head: the base model (the encoder, in "
                                                          "an encoder-decoder) stays fixed. Not for GPT-style models, "
                                                          "whose output layer is their embeddings.")
    freeze_embeddings: bool = Field(
        default=False, description="Keep the (encoder's) embeddings fixed; with tied input and output embeddings "
                                   "(GPT-2, T5) this also fixes the output projection.",
    )
    freeze_layers: int = Field(
        default=0, ge=0, le=1000,
        description="Keep the bottom N transformer layers fixed (of the encoder in an encoder-decoder, whose "
                    "decoder always trains); at most the model's layer count.",
    )
    layer_lr_decay: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="Layer-wise learning-rate decay: the head and the top layer train at learning_rate, each layer "
                    "below at this factor times the rate of the one above, the embeddings below the bottom layer. "
                    "1.0: off.",
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, le=1000,
        description="Stop after this many evaluations (every eval_steps) without improvement of "
                    "early_stopping_metric, and keep the best checkpoint as the result. Needs eval_steps.",
    )
    early_stopping_metric: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_]+$",
        description="Validation metric early stopping watches (with or without the eval_ prefix); default: the "
                    "task's main one (text-classification f1_macro, token-classification f1, others loss).",
    )
    early_stopping_threshold: float = Field(
        default=0.0, ge=0.0, le=1e6,
        description="An evaluation counts as an improvement only if it beats the best by more than this.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto", description="auto: bf16 (fp16 on GPUs without it) where a training step of the model measures "
                                    "at least 1.15x faster than fp32 on this machine, else fp32.",
    )

    lora: LoraOptions | None = Field(
        default=None, description="Train LoRA adapters instead of every weight: the model is registered as a small "
                                  "adapter that references its base model (unless merge_adapter).",
    )
    merge_adapter: bool = Field(
        default=False, description="With lora: merge the trained adapter into the base and register a full model.",
    )

    @field_validator("early_stopping_metric")
    @classmethod
    def _bare_metric(cls, name: str | None) -> str | None:
        # The Trainer reports eval_<name>; either spelling names the same metric.
        if name is not None and not name.removeprefix("eval_"):
            raise ValueError("name a metric, e.g. f1_macro or loss")
        return name.removeprefix("eval_") if name is not None else None

    @model_validator(mode="after")
    def _check_training_control(self):
        problem = training_control_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def training_control_problem(params: FinetuneParams) -> str | None:
    """Say what is wrong with a fine-tune's freezing and early-stopping settings taken together, or None."""
    freezing = [name for name, on in (("freeze_layers", params.freeze_layers > 0),
                                      ("freeze_embeddings", params.freeze_embeddings),
                                      ("layer_lr_decay", params.layer_lr_decay < 1.0)) if on]
    if params.freeze_base and freezing:
        return (f"freeze_base already fixes the embeddings and every layer (of the encoder, in an encoder-decoder), "
                f"so {' and '.join(freezing)} would change nothing: drop freeze_base to train the upper layers, or "
                f"drop {' and '.join(freezing)}")
    stopping = [name for name, on in (("early_stopping_metric", params.early_stopping_metric is not None),
                                      ("early_stopping_threshold", params.early_stopping_threshold > 0)) if on]
    if params.early_stopping_patience is None and stopping:
        verb = "applies" if len(stopping) == 1 else "apply"
        return (f"{' and '.join(stopping)} {verb} only with early stopping: set early_stopping_patience "
                f"(evaluations without improvement before training stops, e.g. 3) or drop {' and '.join(stopping)}")
    if params.lora is not None and freezing + (["freeze_base"] if params.freeze_base else []):
        named = " and ".join(freezing + (["freeze_base"] if params.freeze_base else []))
        return (f"lora already keeps every weight of the base model fixed and trains only the adapters (and the "
                f"head, with lora.train_head), so {named} would change nothing: drop {named}")
    if params.merge_adapter and params.lora is None:
        return "merge_adapter merges a LoRA adapter into its base: set lora (e.g. {\"r\": 8}) or drop merge_adapter"
    if params.early_stopping_patience is not None and params.eval_steps is None:
        return ("early_stopping_patience needs eval_steps: set eval_steps (evaluate every N steps, e.g. 50) so that "
                "there is a validation curve to stop on")
    return None


class EvaluateParams(_Params):
    """Evaluate a model on a labelled dataset."""

    model: ModelRef
    dataset_id: int
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_length: int = Field(default=128, ge=8, le=8192)
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        default="auto",
        description="auto: bf16 (fp16 on GPUs without it) where a probe of the model on the worker's device measures "
                    "it faster than fp32 without changing its predictions, else fp32 (generation: fp32 on a CPU, "
                    "bf16 or fp16 on a GPU). "
                    "int8 (CPU, opt-in): linear layers dynamically quantized; faster, may change some predictions.",
    )


class BatchInferenceParams(_Params):
    """Run the model over every row of a dataset into a JSONL output file, one line per row in order."""

    model: ModelRef
    dataset_id: int
    only_failed_rows_of: int | None = Field(
        default=None, ge=1,
        description="Predict only the rows in the errors file of this succeeded batch_inference job (after a model "
                    "or data fix) and merge them into a copy of its predictions, so the output again covers every "
                    "input row in order. `POST /jobs/{id}/retry` with `only_failed_rows` sets it. A corrected "
                    "dataset must keep every row at its index; only the failed rows are read from it.",
    )
    text_column: str | None = Field(
        default=None, min_length=1, max_length=200, description="Defaults to the dataset's text column."
    )
    max_length: int = Field(default=256, ge=8, le=8192)
    batch_tokens: int = Field(
        default=16_384, ge=256, le=1_048_576, description="Token budget of one length-sorted batch."
    )
    max_batch_size: int = Field(
        default=1024, ge=1, le=4096, description="Most rows in one batch (the token budget usually binds first)."
    )
    chunk_rows: int | None = Field(
        default=None, ge=16, le=1_000_000,
        description="Rows committed together (and sorted by length together). Default: sized as the job runs so "
                    "that a chunk takes about 30 s, which bounds the work a crash can lose.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        default="auto",
        description="auto: bf16 (fp16 on GPUs without it) where a probe of the model on the worker's device measures "
                    "it faster than fp32 without changing its predictions, else fp32 (generation: fp32 on a CPU, "
                    "bf16 or fp16 on a GPU). "
                    "int8 (CPU, opt-in): linear layers dynamically quantized; faster, may change some predictions.",
    )


SHARED_PARAMS: dict[str, type[_Params]] = {
    "finetune": FinetuneParams,
    "evaluate": EvaluateParams,
    "batch_inference": BatchInferenceParams,
}


class GenerationOptions(_Params):
    """How text is generated (translation, summarization, causal-LM continuation)."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Tokens generated at most per row.")
    num_beams: int = Field(default=1, ge=1, le=16, description="Beam search width; 1 is greedy (or sampling).")
    length_penalty: float = Field(default=1.0, ge=-5.0, le=5.0, description="Beam search: >1 favours longer outputs.")
    do_sample: bool = Field(default=False, description="Sample instead of picking the likeliest token.")
    temperature: float = Field(default=1.0, gt=0.0, le=5.0, description="Sampling temperature.")
    top_k: int = Field(default=50, ge=0, le=1000, description="Sampling: keep the k likeliest tokens (0: all).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Sampling: nucleus probability mass.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=8, description="Cut each output at the first of these strings.",
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed of sampling, for repeatable runs.")


class GenerationFinetuneParams(FinetuneParams):
    """A fine-tune of a model that generates text; its validation split is scored on generated text."""

    max_target_length: int = Field(default=128, ge=4, le=8192, description="Tokens of a target kept for training.")
    generation: GenerationOptions = Field(default_factory=GenerationOptions,
                                          description="How validation outputs are generated for the metrics.")


class GenerationEvaluateParams(EvaluateParams):
    """Evaluate a generating model on references."""

    generation: GenerationOptions = Field(default_factory=GenerationOptions)


class GenerationBatchParams(BatchInferenceParams):
    """Generate text for every row of a dataset into a JSONL output file."""

    generation: GenerationOptions = Field(default_factory=GenerationOptions)


GENERATION_PARAMS: dict[str, type[_Params]] = {
    "finetune": GenerationFinetuneParams,
    "evaluate": GenerationEvaluateParams,
    "batch_inference": GenerationBatchParams,
}



class PretrainParams(FinetuneParams):
    """Continued pre-training on unlabelled text: masked-LM for encoders, causal-LM for decoders.

    The texts are concatenated and cut into blocks of `max_length` tokens; a held-out share of the
    documents (or a validation dataset) gives the perplexity. The trained model is registered as a
    base that a fine-tune of any task can start from.
    """

    train_dataset_id: int = Field(description="Dataset of unlabelled text: a text column, or a .txt upload.")
    validation_dataset_id: int | None = Field(
        default=None, description="Text to measure perplexity on; else a held-out share of the train documents."
    )
    text_column: str | None = Field(
        default=None, min_length=1, max_length=200, description="Defaults to the dataset's text column."
    )
    max_length: int = Field(default=128, ge=8, le=8192, description="Tokens per block (texts are concatenated, "
                                                                     "then cut into blocks of this many tokens).")
    objective: Literal["auto", "mlm", "clm"] = Field(
        default="auto", description="mlm: masked-LM (encoders such as BERT); clm: causal-LM (decoders such as GPT-2); "
                                    "auto: from the model's configuration.",
    )
    mlm_probability: float = Field(default=0.15, gt=0.0, lt=1.0, description="mlm: share of tokens masked.")
    freeze_base: bool = Field(default=False, description="Refused: pre-training trains the language model, not a "
                                                          "head over a fixed one (freeze_layers keeps lower layers fixed).")
    lora: None = Field(default=None, description="Not for pre-training, which registers a full base model.")


class MergeParams(_Params):
    """Merge a registered LoRA adapter into its base model and register the result as a full model."""

    model: ModelRef = Field(description="The registered adapter (`name` or `name:version`): a fine-tune with lora.")
    model_name: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Registry name of the merged model; default: the adapter's name with -merged.",
    )
