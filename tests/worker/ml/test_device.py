"""The precision "auto" picks for inference: measured on the model, never slower than fp32, cached per process."""

from __future__ import annotations

import pytest

from worker.errors import PermanentJobError
from worker.ml import device, tuning


@pytest.fixture
def model(tiny_model):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_model)


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.setattr(tuning, "_remembered", {})
    monkeypatch.setattr(tuning, "_directory", None)


def fake_timing(monkeypatch, *, fp32: float, bf16: float, flip: bool = False) -> list[str]:
    """Make the probe report these times per pass (and bf16 predictions all flipped when `flip`)."""
    import torch

    measured = []
    real = device._time_forward

    def timed(model, inputs, repeats: int = 3):
        _seconds, logits = real(model, inputs, repeats=1)
        dtype = "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"
        measured.append(dtype)
        if flip and dtype == "bf16":
            logits = -logits
        return (bf16 if dtype == "bf16" else fp32), logits

    monkeypatch.setattr(device, "_time_forward", timed)
    monkeypatch.setattr(device, "_cpu_supports_bf16", lambda: True)
    return measured


def dtype_of(model) -> str:
    return str(next(model.parameters()).dtype)


def test_a_cpu_that_emulates_bf16_keeps_fp32(model, monkeypatch):
    fake_timing(monkeypatch, fp32=0.10, bf16=0.30)  # what an AVX-512 CPU without native bf16 measures
    where, choice = device.place_for_inference(model, "auto")
    assert (where, choice.precision, dtype_of(model)) == ("cpu", "fp32", "torch.float32")
    assert "bf16 0.33x fp32" in choice.reason and not model.training


def test_bf16_is_chosen_where_it_is_faster_and_agrees(model, monkeypatch):
    fake_timing(monkeypatch, fp32=0.30, bf16=0.10)
    _where, choice = device.place_for_inference(model, "auto")
    assert (choice.precision, dtype_of(model)) == ("bf16", "torch.bfloat16")
    assert "bf16 3.00x fp32" in choice.reason


def test_bf16_that_changes_predictions_is_not_chosen_however_fast(model, monkeypatch):
    fake_timing(monkeypatch, fp32=0.30, bf16=0.10, flip=True)
    _where, choice = device.place_for_inference(model, "auto")
    assert choice.precision == "fp32" and "100.0% of its predictions changed" in choice.reason


def test_the_decision_is_measured_once_per_process_and_model_shape(model, tiny_model, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    measured = fake_timing(monkeypatch, fp32=0.30, bf16=0.10)
    first = device.place_for_inference(model, "auto")[1]
    again = device.place_for_inference(AutoModelForSequenceClassification.from_pretrained(tiny_model), "auto")[1]
    assert first == again and measured == ["fp32", "bf16"]  # one probe, not two


def test_without_bf16_kernels_nothing_is_measured(model, monkeypatch):
    measured = fake_timing(monkeypatch, fp32=0.30, bf16=0.10)
    monkeypatch.setattr(device, "_cpu_supports_bf16", lambda: False)
    _where, choice = device.place_for_inference(model, "auto")
    assert choice.precision == "fp32" and "no bf16 kernels" in choice.reason and measured == []


def test_an_explicit_precision_is_used_as_asked_and_checked(model, monkeypatch):
    measured = fake_timing(monkeypatch, fp32=0.30, bf16=0.10)
    assert device.place_for_inference(model, "fp32")[1].precision == "fp32" and measured == []
    with pytest.raises(PermanentJobError, match="fp16 needs a CUDA GPU"):
        device.place_for_inference(model, "fp16")


def test_the_real_probe_on_this_machine_decides_and_says_why(model):
    _where, choice = device.place_for_inference(model, "auto")
    assert choice.precision in ("fp32", "bf16")
    assert dtype_of(model) == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[choice.precision]
    if device._cpu_supports_bf16():
        assert "x fp32 on a 16x128 probe" in choice.reason


def test_int8_quantizes_the_linear_layers_and_keeps_the_predictions_close(model, tiny_model):
    import torch
    from transformers import AutoModelForSequenceClassification

    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    where, choice = device.place_for_inference(model, "int8")
    assert (where, choice.precision) == ("cpu", "int8") and "dynamically quantized" in choice.reason
    from torch.ao.nn.quantized import dynamic

    assert any(isinstance(module, dynamic.Linear) for module in model.modules())
    assert not any(type(module) is torch.nn.Linear for module in model.modules())
    ids = torch.randint(1, reference.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        exact, quantized = reference(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(exact, quantized, atol=0.1)  # rounded, not broken


def test_training_on_a_cpu_without_bf16_kernels_is_fp32_without_measuring(model, monkeypatch):
    monkeypatch.setattr(device, "_cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(device, "_time_step", lambda *a, **k: pytest.fail("measured"))
    choice = device.choose_training_precision(model, "auto", "cpu")
    assert choice.precision == "fp32" and "no bf16 kernels" in choice.reason


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(0.30, 0.10, "bf16"), (0.10, 0.30, "fp32"), (0.11, 0.10, "fp32")])
def test_training_takes_bf16_only_where_a_step_measures_clearly_faster(model, monkeypatch, fp32, bf16, expected):
    monkeypatch.setattr(device, "_cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "_time_step", lambda _m, _i, _d, dtype, **_k: fp32 if dtype is None else bf16)
    choice = device.choose_training_precision(model, "auto", "cpu")
    assert choice.precision == expected and f"bf16 {fp32 / bf16:.2f}x fp32 per training step" in choice.reason


def test_the_training_probe_leaves_the_model_and_the_random_stream_as_they_were(model):
    import torch

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.eval()
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    device._compare_training_step(model, "cpu", "bf16")  # real passes, bf16 emulated where not native
    assert torch.equal(torch.rand(3), expected_next)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_an_explicit_training_precision_is_checked(model):
    assert device.choose_training_precision(model, "fp32", "cpu").precision == "fp32"
    with pytest.raises(PermanentJobError, match="fp16 needs a CUDA GPU"):
        device.choose_training_precision(model, "fp16", "cpu")


def test_a_gpu_job_process_leaves_cudnn_attention_out(monkeypatch):
    # cuDNN builds an execution plan per new batch shape; every batch of a job has a shape of its own.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    device.configure_cuda.cache_clear()
    try:
        assert device.pick_device() == "cuda" and device.pick_device() == "cuda"
        assert calls == [False]  # once per process
    finally:
        device.configure_cuda.cache_clear()


def test_timed_passes_run_the_batches_after_the_first(model):
    import torch

    seen = []
    original = model.forward

    def forward(**inputs):
        seen.append(tuple(inputs["input_ids"].shape))
        return original(**inputs)

    model.forward = forward
    batches = [tuning.probe_inputs(model, 2, width) for width in (16, 12, 8)]
    _seconds, logits = device._time_forward(model, batches, repeats=3)
    assert seen == [(2, 16), (2, 12), (2, 8), (2, 12)] and logits.dtype == torch.float32
