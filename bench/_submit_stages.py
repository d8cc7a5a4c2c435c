"""The API that `bench/submit_rate.py --stages` serves: the real app, plus cut-down copies of POST /api/v1/jobs,
each stopping after one more part of a submission, to show where a submission's CPU goes.

Each path is under /api/v1, so the bearer-token check runs before each, as before POST /api/v1/jobs:
- /api/v1/bench/authenticated: gunicorn, Flask and the token check, then a small JSON answer;
- /api/v1/bench/parsed: the body parsed and validated too (`JobIn`);
- /api/v1/bench/unpublished: the whole submission (the checks of its dataset and model, its INSERTs, its place
  in line, the commit) but for the Redis message: it is only marked sent, as after a send, so that beat's relay
  never sends it either.
"""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify

import api.jobs
from api import API_PREFIX, services
from api import create_app as create_api
from api.openapi import parse_body
from api.schemas import JobIn

STAGES = {  # path: the row's label in the printout
    "authenticated": "framework and token check",
    "parsed": "+ body validated",
    "unpublished": "+ SQL work, not the publish",
}

bp = Blueprint("bench", __name__)


@bp.post("/authenticated")
def authenticated():
    return jsonify({"stage": "authenticated"}), 202


@bp.post("/parsed")
def parsed():
    submission = parse_body(JobIn).root
    return jsonify({"stage": "parsed", "kind": submission.kind}), 202


@bp.post("/unpublished")
def unpublished():
    submission = parse_body(JobIn).root
    # gunicorn's sync workers serve one request at a time: the swap is seen by this request only.
    publish, api.jobs._publish_now = api.jobs._publish_now, _mark_sent_only
    try:
        _job, _created, answer = api.jobs.create_submission(submission, answer=api.jobs._job_with_place)
    finally:
        api.jobs._publish_now = publish
    return jsonify(answer), 202


def _mark_sent_only(job) -> None:
    services().sent_marks.add(job.id)


def create_app() -> Flask:
    app = create_api()
    app.register_blueprint(bp, url_prefix=f"{API_PREFIX}/bench")
    app.extensions["csrf"].exempt(bp)
    return app
