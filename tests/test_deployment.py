"""docker-compose.yml and the README stay consistent with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from nightshift.cli import _parser
from worker.config import ENV_PREFIX, describe

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {name for name, _default, _help in describe()}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_required_service():
    services = compose()["services"]
    assert {"postgres", "redis", "api", "worker-gpu", "worker-cpu", "beat"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    gpu = services["worker-gpu"]
    assert gpu["command"][-4:] == ["--queues", "gpu", "--name", "gpu"]
    assert gpu["environment"]["NIGHTSHIFT_WORKER_CONCURRENCY"] == "1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    flower = services["flower"]
    assert flower["command"][:4] == ["celery", "--app", "worker.celery_app", "flower"]
    assert gpu["environment"]["NIGHTSHIFT_TASK_EVENTS"] == "true"  # the workers tell Flower about tasks


def test_compose_uses_only_known_settings_and_cli_commands():
    subcommands = set(_parser()._subparsers._group_actions[0].choices)
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith(ENV_PREFIX):
                assert variable in SETTINGS, f"{name}: unknown setting {variable}"
        command = service.get("command", [])
        if command and command[0] == "nightshift":
            assert command[1] in subcommands, f"{name}: no `nightshift {command[1]}` command"
            _parser().parse_args(command[1:])  # raises SystemExit on a bad flag


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(NIGHTSHIFT_[A-Z_]+)`", readme))
    assert SETTINGS <= documented, SETTINGS - documented


def test_compose_can_keep_storage_in_a_bucket():
    """The `bucket` profile runs MinIO; the documented storage options match it; the image can reach it."""
    import json

    services = compose()["services"]
    assert services["minio"]["profiles"] == ["bucket"] and services["bucket"]["profiles"] == ["bucket"]
    for name in ("api", "worker-gpu", "worker-cpu", "beat"):
        environment = services[name]["environment"]
        assert environment["NIGHTSHIFT_STORAGE_URL"] == "${NIGHTSHIFT_STORAGE_URL:-}", name
        assert environment["NIGHTSHIFT_STORAGE_OPTIONS"] == "${NIGHTSHIFT_STORAGE_OPTIONS:-}", name
    text = (ROOT / "docker-compose.yml").read_text()
    options = json.loads(re.search(r"NIGHTSHIFT_STORAGE_OPTIONS='(\{.*?\})'", text).group(1))
    minio = services["minio"]["environment"]
    assert options == {"endpoint_url": "http://minio:9000", "key": minio["MINIO_ROOT_USER"],
                       "secret": minio["MINIO_ROOT_PASSWORD"]}
    assert "s3://nightshift" in text and "local/nightshift" in services["bucket"]["entrypoint"][-1]
    extras = re.search(r"pip install .*'\.\[([a-z0-9,]+)\]'", (ROOT / "Dockerfile").read_text()).group(1)
    assert "s3" in extras.split(",")
