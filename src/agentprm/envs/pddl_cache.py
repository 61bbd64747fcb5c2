"""Caches for the two costs of every ALFWorld reset: fast-downward's PDDL-to-SAS translation and TextWorld's
grammar-text parsing.

TextWorld's ``PddlState.__init__`` calls ``fast_downward.pddl2sas(domain, problem)`` twice (plain and optimised) on
``load`` and again on every ``reset``, although the result depends only on the two texts (measured here: 30-40 ms
for 3-6 receptacles, 45-150 ms for 8-15, 250-430 ms for 25-47). The rest of a reset, and almost all of a step, is
TextWorld deriving text from its grammar: re-parsing template strings and conditions with tatsu and deep-copying
derivation contexts. ``install()`` memoises the parses and makes the context copies shallow (see the functions).

``install()`` puts a caching stand-in for the ``fast_downward`` module into ``textworld.envs.pddl.logic`` (the only
caller). Results are keyed by ``sha256(domain, problem, optimize)``; they are kept in memory (bounded, least recently
used first out) and, when a cache folder is given, pickled to disk so a new process (a worker, a resumed run) starts
warm. The translated task is read-only after translation (TextWorld only reads its actions, objects, types and
initial atoms), so sharing one object between resets is safe.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import pickle
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

_MAX_IN_MEMORY = 256


class TranslationCache:
    """Memoises ``pddl2sas`` in memory and, optionally, on disk."""

    def __init__(self, translate, disk_dir: str | os.PathLike | None = None, max_in_memory: int = _MAX_IN_MEMORY):
        self._translate = translate
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_in_memory = max_in_memory
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(domain: str, problem: str, optimize: bool) -> str:
        digest = hashlib.sha256()
        for part in (domain, "\0", problem, "\0", "optimize" if optimize else "plain"):
            digest.update(part.encode("utf-8"))
        return digest.hexdigest()

    def pddl2sas(self, domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        key = self.key(domain, problem, optimize)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.hits += 1
                return self._memory[key]
        result = self._read_disk(key)
        if result is None:
            self.misses += 1
            result = self._translate(domain, problem, verbose=verbose, optimize=optimize)
            self._write_disk(key, result)
        else:
            self.hits += 1
        with self._lock:
            self._memory[key] = result
            while len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)
        return result

    def _read_disk(self, key: str):
        if self.disk_dir is None:
            return None
        path = self.disk_dir / f"{key}.pkl"
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            return None
        except Exception:
            # A torn or stale cache entry is only a lost speed-up: drop it and translate again.
            path.unlink(missing_ok=True)
            return None

    def _write_disk(self, key: str, result) -> None:
        if self.disk_dir is None:
            return
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.disk_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.disk_dir / f"{key}.pkl")
        except Exception:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear_memory(self) -> None:
        """Forget every in-memory entry, the grammar-parse memos included (the next reset is cold again)."""
        with self._lock:
            self._memory.clear()
        for memo in _PARSE_CACHES:
            memo.clear()


class _FastDownwardProxy:
    """Stands in for the ``fast_downward`` module: every attribute is the real one except ``pddl2sas``."""

    def __init__(self, module, cache: TranslationCache):
        self._module = module
        self.cache = cache

    def pddl2sas(self, *args, **kwargs):
        return self.cache.pddl2sas(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


_PARSE_CACHES: list["_ParseCache"] = []


def _shallow_copy_context(context: dict) -> dict:
    """``textgen.copy_context`` without its deep copies.

    TextWorld deep-copies the ``variables`` and ``mapping`` dicts of the derivation context for every symbol it
    derives (most of a warm reset and of a step). Derivation only ever adds keys to those dicts (``update``) and never
    mutates their values (entity infos, placeholders), so a new dict per copy keeps every derivation independent.
    Measured: identical observations, admissible commands and expert plans, with 20-50x cheaper warm resets.
    """
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


class _ParseCache:
    """Memoises TextWorld's grammar-text parser (``textgen._parse_and_convert``), a pure function of its text.

    TextWorld re-parses the same short template strings with tatsu on every ``derive`` (the intro, every admissible
    command, every feedback), and the whole game grammar (``logic._parse_and_convert``) plus every rule of it on
    every game load; measured, that parsing was about half of a warm reset and most of a reload. Callers mutate the
    returned symbols (they attach contexts), so every hit is a deep copy.
    """

    def __init__(self, parse):
        self._parse = parse
        self._memory: dict = {}
        self.hits = 0
        _PARSE_CACHES.append(self)

    def clear(self) -> None:
        self._memory.clear()

    def __call__(self, text, rule_name=None, **kwargs):
        if kwargs.get("trace"):  # debugging output must really run the parser
            return self._parse(text, rule_name=rule_name, **kwargs)
        key = (text, rule_name)
        if key not in self._memory:
            if len(self._memory) > 50_000:  # bounded: grammars have a few hundred distinct strings
                self._memory.clear()
            self._memory[key] = self._parse(text, rule_name=rule_name, **kwargs)
        else:
            self.hits += 1
        return copy.deepcopy(self._memory[key])


def _cache_conjunctive_queries() -> None:
    """Memoise ``Rule.parse_conjunctive_query``: grammar conditions re-parsed with tatsu on every derivation.

    The parsed rule is only read (matched against the state), never changed, so one object per text is shared.
    """
    from textworld.logic import Rule

    current = Rule.__dict__["parse_conjunctive_query"]
    if getattr(current.__func__, "_agentprm_memo", False):
        return
    memo = functools.lru_cache(maxsize=8192)(current.__func__)
    memo._agentprm_memo = True
    Rule.parse_conjunctive_query = classmethod(memo)


def install(disk_dir: str | os.PathLike | None = None) -> TranslationCache:
    """Route TextWorld's PDDL translation (and its grammar-text parsing) through process-wide caches (idempotent);
    return the translation cache.

    A later call with a ``disk_dir`` turns on the disk layer of the already installed cache.
    """
    from textworld.envs.pddl import logic, textgen

    for module in (textgen, logic):  # rule strings (textgen) and whole game grammars (logic)
        if not isinstance(module._parse_and_convert, _ParseCache):
            module._parse_and_convert = _ParseCache(module._parse_and_convert)
    textgen.copy_context = _shallow_copy_context
    _cache_conjunctive_queries()

    current = logic.fast_downward
    if isinstance(current, _FastDownwardProxy):
        if disk_dir is not None:
            current.cache.disk_dir = Path(disk_dir)
        return current.cache
    cache = TranslationCache(current.pddl2sas, disk_dir)
    logic.fast_downward = _FastDownwardProxy(current, cache)
    return cache
