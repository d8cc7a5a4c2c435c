"""Speed choices measured on the machine at hand and remembered per machine and model shape."""

from __future__ import annotations

import json

import pytest

from worker.ml import tuning


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    monkeypatch.setattr(tuning, "_remembered", {})
    monkeypatch.setattr(tuning, "_directory", None)


@pytest.fixture
def model(tiny_model):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()


def fake_rates(monkeypatch, rates: dict[int, float], by_width: dict[int, dict[int, float]] | None = None) -> list[int]:
    """Make the probe report these tokens/s per budget (per width if given); return the widths it probed."""
    probes = []

    def measure(_model, candidates, width=tuning.PROBE_WIDTH):
        probes.append(width)
        chosen = (by_width or {}).get(width, rates)
        return {"tokens_per_second": {str(b): rate for b, rate in chosen.items() if b in candidates}}

    monkeypatch.setattr(tuning, "_measure_budgets", measure)
    return probes


def test_the_smallest_budget_near_the_fastest_wins(model, monkeypatch):
    fake_rates(monkeypatch, {512: 800.0, 1024: 990.0, 2048: 1000.0, 4096: 700.0})
    assert tuning.batch_token_budget(model, 16_384) == 1024  # within 3% of the best, half the memory


def test_the_callers_budget_is_an_upper_bound(model, monkeypatch):
    probes = fake_rates(monkeypatch, {512: 500.0, 1024: 600.0, 2048: 1000.0})
    assert tuning.batch_token_budget(model, 1024) == 1024
    assert tuning.batch_token_budget(model, 300) == 300  # below every candidate: the caller's own
    assert len(probes) == 1  # nothing measured past the caller's budget, nor below the smallest candidate


def test_a_measurement_is_remembered_on_disk_for_later_processes(model, monkeypatch, tmp_path):
    probes = fake_rates(monkeypatch, {512: 500.0, 1024: 900.0})
    tuning.configure(tmp_path)
    assert tuning.batch_token_budget(model, 16_384) == 1024
    assert tuning.batch_token_budget(model, 16_384) == 1024
    assert len(probes) == 1
    monkeypatch.setattr(tuning, "_remembered", {})  # a new job process on the same machine
    assert tuning.batch_token_budget(model, 16_384) == 1024
    assert len(probes) == 1
    [record] = [json.loads(path.read_text()) for path in tmp_path.glob("batch-tokens-*.json")]
    assert record["key"]["class"] == type(model).__name__ and record["key"]["device"] == "cpu"
    assert record["value"]["tokens_per_second"] == {"512": 500.0, "1024": 900.0}


def test_other_threads_or_another_model_shape_measure_again(model, monkeypatch, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    probes = fake_rates(monkeypatch, {512: 500.0})
    tuning.configure(tmp_path)
    tuning.batch_token_budget(model, 16_384)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        tuning.batch_token_budget(model, 16_384)
    finally:
        torch.set_num_threads(threads)
    config = BertConfig(**{**model.config.to_dict(), "num_hidden_layers": model.config.num_hidden_layers + 1})
    tuning.batch_token_budget(AutoModelForSequenceClassification.from_config(config), 16_384)
    assert len(probes) == 3


def test_a_damaged_record_is_measured_again(model, monkeypatch, tmp_path):
    probes = fake_rates(monkeypatch, {512: 500.0})
    tuning.configure(tmp_path)
    tuning.batch_token_budget(model, 16_384)
    for path in tmp_path.glob("*.json"):
        path.write_text("{not json")
    monkeypatch.setattr(tuning, "_remembered", {})
    assert tuning.batch_token_budget(model, 16_384) == 512
    assert len(probes) == 2


def test_the_real_probe_measures_doubling_budgets_up_to_a_slowdown(model):
    candidates = [512, 1024, 2048, 4096, 8192]
    measured = tuning._measure_budgets(model, candidates, width=128)["tokens_per_second"]
    budgets = [int(b) for b in measured]
    assert budgets == candidates[: len(budgets)]
    assert all(rate > 0 for rate in measured.values())
    rates = list(measured.values())
    # It stops after two budgets in a row clearly slower than the best before each, or at the last candidate.
    assert len(budgets) == len(candidates) or all(
        rates[i] < tuning.NEAR_BEST * max(rates[:i]) for i in (len(rates) - 2, len(rates) - 1))


def test_the_probe_runs_encoder_decoder_models_too():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    measured = tuning._measure_budgets(model, [512, 1024])["tokens_per_second"]
    assert measured and all(rate > 0 for rate in measured.values())
    assert tuning.batch_token_budget(model, 1024) in (512, 1024)


def test_each_width_that_holds_many_tokens_gets_its_own_budget(model, monkeypatch):
    # Long rows prefer smaller batches (attention grows with the square of the width).
    probes = fake_rates(monkeypatch, {}, by_width={
        32: {512: 500.0, 1024: 700.0, 2048: 900.0, 4096: 1000.0},
        256: {512: 900.0, 1024: 1000.0, 2048: 800.0},
    })
    lengths = [20] * 300 + [200] * 40 + [90] * 2  # tokens: 6,000 at 32, 8,000 at 256, 180 at 128
    budget = tuning.budgets_by_width(model, 16_384, lengths)
    assert sorted(probes) == [32, 256]  # the 128 bucket holds too few tokens to measure
    assert budget(20) == budget(32) == 4096
    assert budget(200) == 1024
    assert budget(90) == 1024  # borrowed from the nearest measured width (256 before 32)
    assert budget(9) == 4096


def test_a_width_measures_only_budgets_that_hold_a_row_and_fit_the_row_cap(model, monkeypatch):
    seen = []
    monkeypatch.setattr(tuning, "_measure_budgets",
                        lambda _m, candidates, width: seen.append((width, candidates)) or {"tokens_per_second": {}})
    tuning.batch_token_budget(model, 16_384, width=1024)
    tuning.batch_token_budget(model, 65_536, width=16, max_rows=128)
    assert seen == [(1024, [1024, 2048, 4096, 8192, 16_384]), (16, [512, 1024, 2048])]


def test_batches_follow_the_budget_of_their_width():
    from worker.ml.predict import length_batches

    lengths = [100] * 6 + [10] * 40
    batches = length_batches(lengths, batch_tokens=lambda width: 200 if width > 50 else 400, max_batch_size=64)
    assert [len(b) for b in batches] == [2, 2, 2, 40]


def test_one_slow_pass_does_not_end_the_search(model, monkeypatch):
    # tokens/s per budget as a shared machine may measure them: 1,024 hit a busy moment.
    rates = {512: 8000.0, 1024: 7000.0, 2048: 8600.0, 4096: 8700.0, 8192: 7000.0, 16_384: 6000.0, 32_768: 9000.0}
    monkeypatch.setattr(tuning, "_best_of", lambda _m, inputs, **_k: inputs["input_ids"].numel() / rates[inputs["input_ids"].numel()])
    measured = tuning._measure_budgets(model, list(rates), width=64)["tokens_per_second"]
    assert [int(b) for b in measured] == [512, 1024, 2048, 4096, 8192, 16_384]  # stops after two slower in a row
    tuning._remembered.clear()
    monkeypatch.setattr(tuning, "_measure_budgets", lambda *_a, **_k: {"tokens_per_second": measured})
    assert tuning.batch_token_budget(model, 65_536) == 2048  # the smallest within 3% of the best (4,096)
