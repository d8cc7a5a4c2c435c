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


def search(budgets: tuning.BatchBudgets, width: int, rates: dict[int, float], *, batches: int = 100) -> list[int]:
    """Run full batches at `width` as a job would, each taking the time `rates` (tokens/s by budget) gives; return the budgets tried."""
    tried = []
    for _ in range(batches):
        budget = budgets(width)
        tried.append(budget)
        rows = budget // width
        budgets.observe(width, rows, rows * width / rates[budget])
    return tried


def test_the_smallest_budget_near_the_fastest_wins():
    candidates = [512, 1024, 2048, 4096, 8192]
    rates = {512: 800.0, 1024: 990.0, 2048: 1000.0, 4096: 700.0, 8192: 600.0}
    assert tuning.verdict(candidates, rates) == (1024, 8192)  # within 1% of the best, half the memory
    assert tuning.verdict(candidates, {512: 800.0, 1024: 990.0}) == (None, 2048)  # still searching


def test_one_slow_candidate_does_not_end_the_search():
    # tokens/s per budget as a shared machine may measure them: 1,024 hit a busy moment.
    rates = {512: 8000.0, 1024: 7000.0, 2048: 8600.0, 4096: 8700.0, 8192: 7000.0, 16_384: 6000.0, 32_768: 9000.0}
    decided, _ = tuning.verdict(list(rates), rates)
    assert decided == 4096  # stopped after 8,192 and 16,384, both slower; 2,048 is 1.1% slower than 4,096


def test_batches_search_the_budget_and_use_it_once_decided(model):
    budgets = tuning.BatchBudgets(model, 16_384, max_rows=1024)
    rates = {512: 500.0, 1024: 900.0, 2048: 1000.0, 4096: 800.0, 8192: 700.0, 16_384: 990.0}
    tried = search(budgets, 32, rates, batches=20)
    # Each candidate is timed on three full batches (or 8,192 tokens), in doubling order, until two in a row are slower.
    assert tried[:12] == [512] * 3 + [1024] * 3 + [2048] * 3 + [4096] * 2 + [8192]
    assert set(tried[12:]) == {2048}
    assert budgets.decided() == {32: 2048}


def test_the_fastest_sample_counts_and_short_batches_are_not_timed(model):
    budgets = tuning.BatchBudgets(model, 1024, max_rows=1024)
    budgets.observe(32, 4, 10.0)  # 128 tokens of a 512 budget: the last batch of a run, not timed
    budgets.observe(32, 16, 16 * 32 / 100.0)  # a busy moment
    budgets.observe(32, 16, 16 * 32 / 500.0)
    budgets.observe(32, 16, 16 * 32 / 450.0)
    assert budgets(32) == 1024  # 512 measured three times; 1,024 next
    for _ in range(3):
        budgets.observe(32, 32, 32 * 32 / 490.0)
    assert budgets.decided() == {32: 512}  # 512's best sample, 500, beats 1,024's 490


def test_the_row_cap_fills_a_batch_of_short_rows(model):
    budgets = tuning.BatchBudgets(model, 2048, max_rows=64)
    assert budgets(9) == 512  # bucket 16: 512 / 16 = 32 rows; 2,048 / 16 = 128 rows is past the cap
    for _ in range(3):
        budgets.observe(9, 56, 56 * 9 / 100.0)  # 504 tokens of 512: full
    for _ in range(3):
        budgets.observe(9, 64, 64 * 9 / 120.0)  # the cap of 64 rows, 576 of 1,024 tokens: full too
    assert budgets.decided() == {16: 1024}


def test_the_callers_budget_is_an_upper_bound(model):
    budgets = tuning.BatchBudgets(model, 1024)
    assert search(budgets, 64, {512: 500.0, 1024: 600.0}, batches=10)[-1] == 1024
    assert tuning.BatchBudgets(model, 300)(64) == 300  # below every candidate: the caller's own
    assert tuning.BatchBudgets(model, 16_384)(20_000) == 16_384  # wider than the budget: one row per batch


def test_each_width_searches_its_own_budget(model):
    # Long rows prefer smaller batches (attention grows with the square of the width).
    budgets = tuning.BatchBudgets(model, 16_384)
    search(budgets, 32, {512: 500.0, 1024: 700.0, 2048: 900.0, 4096: 1000.0, 8192: 900.0, 16_384: 800.0}, batches=30)
    search(budgets, 200, {512: 900.0, 1024: 1000.0, 2048: 800.0, 4096: 700.0}, batches=30)
    assert budgets.decided() == {32: 4096, 256: 1024}
    assert budgets(20) == budgets(32) == 4096  # one bucket: 17 to 32 tokens
    assert budgets(129) == 1024


def test_a_search_is_remembered_on_disk_and_continued_by_later_processes(model, monkeypatch, tmp_path):
    tuning.configure(tmp_path)
    rates = {512: 500.0, 1024: 900.0, 2048: 800.0, 4096: 700.0, 8192: 600.0, 16_384: 500.0}
    tried = search(tuning.BatchBudgets(model, 16_384), 64, rates, batches=5)  # a small job: 512 done, 1,024 begun
    assert tried == [512] * 3 + [1024] * 2
    monkeypatch.setattr(tuning, "_remembered", {})  # the next job process on the same machine
    tried = search(tuning.BatchBudgets(model, 16_384), 64, rates, batches=12)
    assert tried[:8] == [1024] * 3 + [2048] * 3 + [4096] * 2  # 512 is not timed again
    assert set(tried[8:]) == {1024}
    monkeypatch.setattr(tuning, "_remembered", {})
    assert tuning.BatchBudgets(model, 16_384)(64) == 1024  # decided: used at once
    [record] = [json.loads(path.read_text()) for path in tmp_path.glob("batch-budget-*.json")]
    assert record["key"]["class"] == type(model).__name__ and record["key"]["device"] == "cpu"
    assert record["key"]["width"] == 64
    assert record["value"] == {"tokens_per_second": {"512": 500.0, "1024": 900.0, "2048": 800.0, "4096": 700.0},
                               "decided": 1024}


def test_other_threads_or_another_model_shape_search_again(model, monkeypatch, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    tuning.configure(tmp_path)
    search(tuning.BatchBudgets(model, 1024), 64, {512: 500.0, 1024: 400.0}, batches=6)
    assert tuning.BatchBudgets(model, 1024).decided() == {} and tuning.BatchBudgets(model, 1024)(64) == 512
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert tuning.BatchBudgets(model, 1024)(64) == 512  # searching from the first candidate again
        assert tuning.BatchBudgets(model, 1024)._search(64).decided is None
    finally:
        torch.set_num_threads(threads)
    config = BertConfig(**{**model.config.to_dict(), "num_hidden_layers": model.config.num_hidden_layers + 1})
    other = tuning.BatchBudgets(AutoModelForSequenceClassification.from_config(config), 1024)
    assert other._search(64).decided is None
    assert tuning.BatchBudgets(model, 1024)._search(64).decided == 512


def test_a_damaged_record_is_searched_again(model, monkeypatch, tmp_path):
    tuning.configure(tmp_path)
    search(tuning.BatchBudgets(model, 1024), 64, {512: 500.0, 1024: 400.0}, batches=6)
    for path in tmp_path.glob("*.json"):
        path.write_text("{not json")
    monkeypatch.setattr(tuning, "_remembered", {})
    assert tuning.BatchBudgets(model, 1024)._search(64).decided is None


def test_out_of_memory_rules_out_the_budget_and_larger_ones(model):
    budgets = tuning.BatchBudgets(model, 16_384)
    search(budgets, 64, {512: 500.0, 1024: 900.0}, batches=6)
    assert budgets(64) == 2048
    budgets.too_big(64)  # 2,048 ran out of memory
    assert budgets.decided() == {64: 1024}
    budgets.too_big(64)
    assert budgets.decided() == {64: 512}
    budgets.too_big(64)  # even the smallest: batches split further as they run
    assert budgets.decided() == {64: 512}


def test_a_budget_lowered_after_running_out_of_memory_stays_lowered(model, monkeypatch, tmp_path):
    tuning.configure(tmp_path)
    budgets = tuning.BatchBudgets(model, 16_384)
    search(budgets, 64, {512: 500.0, 1024: 900.0}, batches=6)
    budgets.too_big(64)  # 2,048 ran out of memory
    monkeypatch.setattr(tuning, "_remembered", {})  # the next job process
    assert tuning.BatchBudgets(model, 16_384)(64) == 1024


def test_a_width_tries_only_budgets_that_hold_a_row_and_fit_the_row_cap(model):
    assert tuning.BatchBudgets(model, 16_384)._search(1024).candidates == [1024, 2048, 4096, 8192, 16_384]
    assert tuning.BatchBudgets(model, 65_536, max_rows=128)._search(16).candidates == [512, 1024, 2048]


def test_batches_follow_the_budget_of_their_width():
    from worker.ml.predict import length_batches

    lengths = [100] * 6 + [10] * 40
    batches = length_batches(lengths, batch_tokens=lambda width: 200 if width > 50 else 400, max_batch_size=64)
    assert [len(b) for b in batches] == [2, 2, 2, 40]


def test_predicting_many_rows_decides_real_budgets_and_predicts_as_one_row_at_a_time(model, tiny_model, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from worker.ml.predict import map_batches, tokenize_lean

    tuning.configure(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [" ".join(["good", "bad", "film"][(i + j) % 3] for j in range(3 + i % 9)) for i in range(6000)]
    encoded = tokenize_lean(tokenizer, texts, truncation=True, max_length=64)

    def step(inputs, _batch):
        return model(**inputs).logits.float().cpu()

    batched = torch.stack(map_batches(model, tokenizer, encoded, step=step, batch_tokens=4096, max_batch_size=256))
    with torch.inference_mode():
        alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts[:50]])
    assert torch.allclose(batched[:50], alone, atol=1e-5)
    records = [json.loads(path.read_text())["value"] for path in tmp_path.glob("batch-budget-*.json")]
    assert any(record["decided"] in (512, 1024, 2048, 4096) for record in records), records
    assert all(rate > 0 for record in records for rate in record["tokens_per_second"].values())


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_matches_the_tokenizers_own(tiny_model, side):
    import torch
    from transformers import AutoTokenizer

    from worker.ml.predict import pad_batch

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.padding_side = side
    encoded = tokenizer(["a good film", "bad", "a very very good long film indeed"], ["x", "y y", "z"])
    keys = [key for key in ("input_ids", "token_type_ids") if key in encoded]
    expected = tokenizer.pad({key: [encoded[key][i] for i in (2, 0, 1)] for key in keys}, return_tensors="pt",
                             return_attention_mask=True)
    padded = pad_batch(tokenizer, encoded, keys, [2, 0, 1])
    assert set(padded) == set(expected)
    for key in expected:
        assert torch.equal(padded[key], expected[key]), key
