"""The dashboard in a real headless Chromium against the running stack (gunicorn, a Celery worker, beat).

The browser logs in, watches a fine-tune's progress bar and loss chart move, cancels it, opens a
finished fine-tune's evaluation and its confusion matrix, downloads a batch job's output, logs in as
a viewer to find the write buttons gone and the write routes refused, and submits a pipeline from
its form, follows it to a step's job page and the pipelines list, and cancels it. Every page it visits is
saved as a screenshot under test-artifacts/screenshots (NIGHTSHIFT_TEST_ARTIFACTS to move it).

Chromium is Debian's (`apt-get install chromium`, which scripts/test.sh does on CI), driven by the
playwright package with `executable_path`: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import wait_until, write_reviews

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("NIGHTSHIFT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000  # a loaded 2-core machine can take its time; every wait polls until then


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/test.sh installs it with apt-get on CI")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def dashboard(system):
    client, settings, _stack = system
    return client, settings.base_url, client.http.headers["Authorization"].removeprefix("Bearer ")


def new_page(browser, base_url: str, token: str):
    """A fresh browser context, logged in with `token`."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/jobs")
    expect(page).to_have_url(f"{base_url}/login?next=/jobs")
    shoot(page, "login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base_url}/jobs")
    return page


def shoot(page, name: str) -> None:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def progress_of(page) -> int:
    """Steps done, as the job page's progress bar shows them."""
    return int(page.locator("#job-live [role=progressbar]").get_attribute("data-done"))


def chart_points(page) -> int:
    return int(page.locator("#charts").get_attribute("data-points") or 0)


@pytest.mark.parametrize("system", ["sqlite"], indirect=True)
def test_the_dashboard_in_a_browser(browser, dashboard, database, tiny_model, tmp_path):
    from playwright.sync_api import expect

    client, base_url, token = dashboard
    page = new_page(browser, base_url, token)

    # Upload labelled reviews through the datasets page: a wrong column is named beside its field first.
    page.click("nav >> text=Datasets")
    page.set_input_files("input[name=file]", str(write_reviews(tmp_path / "train.csv", 200, seed=1)))
    page.select_option("select[name=task]", "text-classification")
    page.fill("input[name=label_column]", "sentiment")
    page.click("[data-testid=upload]")
    expect(page.locator("#label_column-error")).to_contain_text("sentiment")
    page.set_input_files("input[name=file]", str(tmp_path / "train.csv"))
    page.fill("input[name=label_column]", "label")
    page.click("[data-testid=upload]")
    expect(page.locator("[data-testid=rows]")).to_have_text("200")
    train = client.request("GET", f"/datasets/{int(page.url.rsplit('/', 1)[1])}")
    assert train["task"] == "text-classification" and train["row_count"] == 200
    shoot(page, "dataset")

    long_run = client.submit("finetune", {"base_model": str(tiny_model), "train_dataset_id": train["id"],
                                          "max_steps": 1_000_000, "logging_steps": 5, "save_steps": 1_000_000})

    # A second fine-tune through the new-job form: a wrong value is named beside its field first.
    page.goto("/jobs")
    page.click("[data-testid=new-job-link]")
    page.select_option("select[name=kind]", "finetune")
    page.fill("#f-base_model", str(tiny_model))
    page.select_option("#f-train_dataset_id", str(train["id"]))
    page.fill("#f-max_steps", "-60")
    page.fill("#f-logging_steps", "5")
    page.fill("#f-model_name", "browser-sentiment")
    page.click("[data-testid=submit-job]")
    expect(page.locator("[data-testid=error-max_steps]")).to_contain_text("greater than")
    shoot(page, "new-job-error")
    page.fill("#f-max_steps", "60")
    page.click("[data-testid=submit-job]")
    expect(page.locator("h1")).to_contain_text("finetune")
    short_run = client.job(int(page.url.rsplit("/", 1)[1]))
    assert short_run["params"]["max_steps"] == 60 and short_run["params"]["model_name"] == "browser-sentiment"
    page.goto("/jobs")

    # The jobs page lists both, newest first, and follows the long run into "running" without a reload.
    rows = page.locator("table.jobs tbody tr")
    expect(rows.first).to_have_attribute("data-job", str(short_run["id"]))
    long_row = page.locator(f"tr[data-job='{long_run['id']}']")
    expect(long_row.locator("[data-testid=status]")).to_have_text("running")
    expect(page.locator(f"tr[data-job='{short_run['id']}'] [data-testid=queue-position]")).to_contain_text("#1 in queue")
    shoot(page, "jobs")

    # Its page: the progress bar and the loss chart move while we watch.
    long_row.locator("a").click()
    expect(page.locator("#job-live [data-testid=status]")).to_have_text("running")
    page.wait_for_function("document.querySelector('#charts').dataset.points > 0")
    first_progress, first_points = progress_of(page), chart_points(page)
    wait_until(lambda: progress_of(page) > first_progress and chart_points(page) > first_points,
               timeout=TIMEOUT_MS / 1000, message="the progress bar and the loss chart move")
    expect(page.locator("[data-testid=params]")).to_contain_text('"max_steps": 1000000')
    expect(page.locator("[data-testid=curl]")).to_contain_text(f"{base_url}/api/v1/jobs")
    shoot(page, "job-running")

    page.click("[data-testid=cancel]")
    expect(page.locator("#job-live [data-testid=status]")).to_have_text("cancelled")
    # The page reloads itself once it sees the job end; leaving before that reload lands would let it take
    # the browser back to this job from the next page.
    expect(page.locator("#charts")).to_have_attribute("data-ended", "true")
    expect(page.locator("[data-testid=retry]")).to_be_visible()
    assert client.job(long_run["id"])["status"] == "cancelled"

    # The short run finishes: its evaluation and confusion matrix.
    page.goto(f"/jobs/{short_run['id']}")
    expect(page.locator("#job-live [data-testid=status]")).to_have_text("succeeded")  # the page reloads itself
    matrix = page.locator("[data-testid=confusion-matrix]")
    expect(matrix).to_be_visible()
    cells = [int(text) for text in matrix.locator("td").all_inner_texts()]
    validation_rows = client.job(short_run["id"])["result"]["train"]["validation_rows"]
    assert len(cells) == 4 and sum(cells) == validation_rows
    shoot(page, "job-evaluation")

    # A batch job's output downloads from its page.
    texts = client.upload_dataset(write_reviews(tmp_path / "texts.csv", 30, seed=2, labelled=False))
    batch = client.wait(client.submit("batch_inference", {"model": "browser-sentiment", "dataset_id": texts["id"]})["id"],
                        timeout=300)
    assert batch["status"] == "succeeded", batch["error"]
    page.goto(f"/jobs/{batch['id']}")
    with page.expect_download() as download:
        page.click("[data-testid=download-output]")
    saved = tmp_path / "downloaded.jsonl"
    download.value.save_as(saved)
    assert [json.loads(line)["row"] for line in saved.open()] == list(range(30))
    shoot(page, "job-batch")

    # The registry, the datasets with the jobs that used them, and the worker that ran everything.
    page.goto("/models")
    expect(page.locator("main")).to_contain_text("browser-sentiment")
    shoot(page, "models")
    page.goto("/models/browser-sentiment")
    expect(page.locator("[data-testid=evaluations]")).to_contain_text("browser-sentiment:1")
    shoot(page, "model")
    page.goto(f"/models/compare?a=browser-sentiment:1&b=browser-sentiment&dataset={train['id']}")
    expect(page.locator("[data-testid=comparison]")).to_contain_text("accuracy")
    shoot(page, "models-compare")
    page.goto(f"/datasets/{train['id']}")
    expect(page.locator("[data-testid=dataset-jobs]")).to_contain_text(f"#{short_run['id']}")
    page.goto("/datasets")
    shoot(page, "datasets")
    page.goto("/workers")
    expect(page.locator("[data-testid=workers] tbody tr")).to_have_count(1)
    expect(page.locator("[data-testid=device]")).to_contain_text("CPU")
    assert page.locator("[data-testid=stale]").count() == 0
    shoot(page, "workers")

    # A viewer sees the same jobs, no write button, and every write is refused.
    viewer = new_page(browser, base_url, viewer_token(database))
    viewer.goto(f"/jobs/{long_run['id']}")
    expect(viewer.locator("[data-testid=who]")).to_contain_text("viewer")
    expect(viewer.locator("[data-testid=status]").first).to_have_text("cancelled")
    assert viewer.locator("[data-testid=retry]").count() == 0 and viewer.locator("[data-testid=cancel]").count() == 0
    shoot(viewer, "job-as-viewer")
    refused = viewer.evaluate(
        """async (url) => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const response = await fetch(url, {method: 'POST', body: new URLSearchParams({csrf_token: csrf})});
            return response.status;
        }""", f"/jobs/{long_run['id']}/retry")
    assert refused == 403
    api_refused = viewer.evaluate(
        """async ([url, token]) => (await fetch(url, {method: 'POST', headers: {Authorization: 'Bearer ' + token}})).status""",
        [f"/api/v1/jobs/{long_run['id']}/retry", viewer_token(database)])
    assert api_refused == 403
    assert [j["id"] for j in client.request("GET", "/jobs")["items"]][0] == batch["id"]  # nothing was retried
    viewer.context.close()

    # A pipeline from its form: a wrong step is named beside the text first; Cancel pipeline ends every step.
    page.goto("/pipelines")
    page.click("[data-testid=new-pipeline-link]")
    tune = {"name": "tune", "kind": "finetune", "params": {"base_model": str(tiny_model), "train_dataset_id": train["id"],
                                                           "max_steps": 1_000_000, "save_steps": 1_000_000}}
    label = {"name": "label", "kind": "batch_inference", "params": {"model": "@tune", "dataset_id": texts["id"]}}
    page.fill("#f-steps", json.dumps({"name": "browser-pipeline", "steps": [tune, {**label, "after": "nowhere"}]},
                                     indent=2))
    page.click("[data-testid=submit-pipeline]")
    expect(page.locator("[data-testid=pipeline-errors]")).to_contain_text("'nowhere' is not a step")
    shoot(page, "new-pipeline-error")
    page.fill("#f-steps", json.dumps({"name": "browser-pipeline", "steps": [tune, label]}, indent=2))
    page.click("[data-testid=submit-pipeline]")
    expect(page.locator("[data-testid=pipeline-status]")).to_have_text(re.compile("queued|running"))
    pipeline_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#step-label [data-testid=step-status]")).to_have_text("waiting")
    shoot(page, "pipeline")
    page.click("#step-label >> text=job #")
    expect(page.locator("[data-testid=pipeline-of-job]")).to_contain_text(f"step 'label' of pipeline {pipeline_id}")
    shoot(page, "job-step")
    page.goto("/pipelines")
    expect(page.locator(f"tr[data-pipeline='{pipeline_id}'] [data-testid=step-badge]")).to_have_count(2)
    shoot(page, "pipelines")
    page.click(f"tr[data-pipeline='{pipeline_id}'] [data-testid=pipeline-link]")
    page.click("[data-testid=cancel-pipeline]")
    expect(page.locator("[data-testid=pipeline-status]")).to_have_text("cancelled")  # polled until every step ends
    expect(page.locator("[data-testid=step-status]")).to_have_text(["cancelled", "cancelled"])
    assert page.locator("[data-testid=cancel-pipeline]").count() == 0
    shoot(page, "pipeline-cancelled")
    assert client.pipeline(pipeline_id)["status"] == "cancelled"
    page.context.close()


def viewer_token(database) -> str:
    from db.services.tenants import get_or_create_tenant, issue_token

    with database() as session, session.begin():
        return issue_token(session, get_or_create_tenant(session, "default"), role="viewer")
