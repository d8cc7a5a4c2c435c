"""worker/broker.py reads kombu's private Redis layout: only kombu versions it was tested with may run it."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from kombu.transport.redis import Channel
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from worker import broker

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_kombu_is_a_version_the_broker_module_was_tested_with():
    installed = Version(importlib.metadata.version("kombu"))
    assert installed in SpecifierSet(broker.KOMBU_TESTED), (
        f"kombu {installed} is outside {broker.KOMBU_TESTED}: check worker/broker.py against its Redis "
        "transport, then widen KOMBU_TESTED and pyproject.toml together"
    )


def test_pyproject_pins_kombu_to_the_tested_range():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [kombu] = [Requirement(d) for d in dependencies if Requirement(d).name == "kombu"]
    assert kombu.specifier == SpecifierSet(broker.KOMBU_TESTED)


def test_the_key_names_the_module_reads_are_the_installed_transports():
    assert (Channel.sep, list(Channel.priority_steps)) == (broker.PRIORITY_SEPARATOR, list(broker.PRIORITY_STEPS))
    assert (Channel.unacked_key, Channel.unacked_index_key) == (broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY)
