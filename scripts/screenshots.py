"""Save the README's dashboard screenshots from a running stack (e.g. after `nightshift demo`).

    nightshift demo &          # or any stack with jobs in it
    python scripts/screenshots.py --url http://127.0.0.1:8080 --token "$(cat .nightshift/token)"

Writes docs/screenshots/jobs.png (the jobs page) and docs/screenshots/job.png (the newest
fine-tune's page) with Debian's chromium through playwright; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from nightshift.client import Client

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    finetunes = Client(args.url, args.token).request("GET", "/jobs", params={"kind": "finetune"})["items"]
    if not finetunes:
        raise SystemExit("no fine-tune job on this stack: run `nightshift demo` first")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page(base_url=args.url, viewport={"width": 1280, "height": 760})
        page.goto("/login")
        page.fill("#token", args.token)
        page.click("button[type=submit]")
        page.wait_for_url("**/jobs")
        page.screenshot(path=str(args.out / "jobs.png"))
        page.goto(f"/jobs/{finetunes[0]['id']}")
        page.wait_for_function("Number(document.querySelector('#charts').dataset.points || 0) > 0")
        page.screenshot(path=str(args.out / "job.png"), full_page=True)
        browser.close()
    print(f"wrote {args.out / 'jobs.png'} and {args.out / 'job.png'}")


if __name__ == "__main__":
    main()
