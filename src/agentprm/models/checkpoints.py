"""Where a model comes from: a local Hugging Face checkpoint folder, or a hub id on a machine that can download.

``check_model_source`` runs before any work: a local path must be a folder with ``config.json``; anything else must
look like a hub id (``owner/name``, e.g. ``meta-llama/Llama-3.2-3B-Instruct``), which ``from_pretrained`` resolves
itself. So the GPU user's hub model needs no code change, and a typo in a local path fails at once, by name.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_source(source: str | Path) -> str:
    """Return ``source`` as a string if it is loadable in principle; raise FileNotFoundError / ValueError if not."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a Hugging Face checkpoint (expected a folder with config.json)")
        return str(path)
    if HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return text
    raise FileNotFoundError(f"model path {text!r} does not exist (build one with `agentprm init-model`)")


LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError)
try:  # a truncated or overwritten weights file
    from safetensors import SafetensorError

    LOAD_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    pass


def load_error(source: str, error: Exception) -> Exception:
    """The error to raise when ``from_pretrained(source)`` failed: a damaged local checkpoint names its folder and
    the command that rebuilds it; a hub id explains the hub."""
    if Path(source).expanduser().exists():
        from agentprm.errors import damaged

        return damaged(source, f"an unreadable checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})")
    return hub_load_error(source, error)


def hub_load_error(source: str, error: Exception) -> OSError:
    """A readable error for a hub id that could not be loaded (no network, gated model, typo)."""
    return OSError(f"cannot load model {source!r}: {error}. On a machine without access to the model hub, pass a "
                   f"local checkpoint folder instead.")
