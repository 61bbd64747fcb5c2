"""The results of a run: ``summary.json`` (the results table), its plots and ``report.md``.

``summary.json`` (DESIGN.md, "The run directory"; read by tools and tests, so validated on read and write)::

    {"schema_version": 1, "env": "alfworld", "split": "unseen", "eval_games": 134, "max_steps": 30,
     "rows": [{"agent": "pi_1", "iteration": 1, "kind": "policy" | "bon", "n": 1 | 16, "prm": "Q_0" | null,
               "success": 0.739, "ci95": [0.66, 0.81], "mean_actions": 14.0, "episodes": 134,
               "by_task_type": {"pick_and_place_simple": 0.58, ...}}, ...]}

A row is one evaluated agent: the policy ``pi_i`` alone (``kind="policy"``, ``n=1``, ``prm=null``),
BoN(pi_i, Q_j) (``kind="bon"``, ``prm="Q_j"``), or (``agentprm eval``) a baseline without a PRM: ``random``,
``expert`` or ``api`` (n=1, prm=null); ``ci95`` is the Wilson 95% interval of ``success``. ``iteration`` is null for
an agent that is not an iteration of a run. ``agentprm eval`` rows also carry ``split``, ``label`` and, for API
models, ``usage`` (requests, retries, tokens, seconds, cost).

Plots are PNGs drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), the same
bytes for the same input. ``report.md`` holds a Table-1-style table (ALFWorld task types in the paper's short names
and order: Pick, Clean, Heat, Cool, Look, Pick2), every plot under ``RUN/plots`` and any extra sections.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentprm.pipeline.results import SuccessTable, wilson_interval

SCHEMA_VERSION = 1
KINDS = ("policy", "bon", "random", "expert", "api")
SINGLE_KINDS = ("policy", "random", "expert", "api")  # rows without a PRM: n = 1, prm = null
ALFWORLD_SHORT_NAMES = {  # the paper's column order
    "pick_and_place_simple": "Pick",
    "pick_clean_then_place_in_recep": "Clean",
    "pick_heat_then_place_in_recep": "Heat",
    "pick_cool_then_place_in_recep": "Cool",
    "look_at_obj_in_light": "Look",
    "pick_two_obj_and_place": "Pick2",
}
BEST_OF_N_VALUES = (1, 2, 4, 8, 16, 32)
PLOT_TITLES = {  # known plots first, in this order; any other PNG in RUN/plots follows by name
    "success_per_iteration.png": "Success per iteration",
    "best_of_n.png": "Best-of-N test-time scaling",
    "task_types.png": "Success per task type",
    "calibration.png": "PRM calibration",
    "reward_hacking.png": "Reward hacking",
}


class SummaryError(ValueError):
    """A summary that does not follow the schema; the message names the file, the field and the problem."""


# -- rows and summary.json -------------------------------------------------------------------------------------------


def summary_row(agent: str, iteration: int | None, kind: str, n: int, prm: str | None,
                table: SuccessTable) -> dict:
    """One results-table row from an evaluation's success table (all splits of the table pooled)."""
    wins, episodes = table.counts()
    row = {"agent": agent, "iteration": iteration, "kind": kind, "n": n, "prm": prm,
           "success": table.success(), "ci95": list(wilson_interval(wins, episodes)),
           "mean_actions": table.mean_steps(), "by_task_type": table.by_task_type(), "episodes": episodes}
    _check_row(row, "row")
    return row


def row_label(row: Mapping[str, Any]) -> str:
    """How the paper names a row: ``pi_1`` or ``BoN(pi_1, Q_0), N=16`` (baselines by their agent name)."""
    if row["kind"] != "bon":
        return str(row["agent"])
    return f"BoN({row['agent']}, {row['prm']}), N={row['n']}"


def write_summary(path: str | Path, env: str, split: str, eval_games: int, max_steps: int,
                  rows: Sequence[Mapping[str, Any]]) -> Path:
    """Validate and write ``summary.json`` atomically (a crash never leaves a half-written file)."""
    summary = {"schema_version": SCHEMA_VERSION, "env": env, "split": split, "eval_games": eval_games,
               "max_steps": max_steps, "rows": [dict(row) for row in rows]}
    validate_summary(summary, source=str(path))
    _atomic_write(Path(path), (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return Path(path)


def read_summary(path: str | Path) -> dict:
    """Read and validate ``summary.json``; ``SummaryError`` names the problem (``FileNotFoundError`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No summary at {path}: run `agentprm eval` (or `agentprm run`) to produce it")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SummaryError(f"{path} is not valid JSON ({error}); it may be truncated: rerun the eval stage") from None
    validate_summary(summary, source=str(path))
    return summary


def validate_summary(summary: Any, source: str = "summary") -> None:
    """Raise ``SummaryError`` unless ``summary`` follows the schema (see the module docstring)."""
    if not isinstance(summary, dict):
        raise SummaryError(f"{source}: expected a JSON object, got {type(summary).__name__}")
    version = summary.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "no schema_version" if version is None else f"schema_version {version!r}"
        raise SummaryError(f"{source} was written by an incompatible agentprm version ({found}; this version reads "
                           f"schema_version {SCHEMA_VERSION}): re-create it with `agentprm eval` or `agentprm report`")
    _check_type(summary, "env", str, source)
    _check_type(summary, "split", str, source)
    _check_count(summary, "eval_games", source, minimum=0)
    _check_count(summary, "max_steps", source, minimum=1)
    _check_type(summary, "rows", list, source)
    for index, row in enumerate(summary["rows"]):
        _check_row(row, f"{source}: rows[{index}]")


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise SummaryError(f"{where}: expected an object, got {type(row).__name__}")
    _check_type(row, "agent", str, where)
    if row.get("iteration", 0) is not None:
        _check_count(row, "iteration", where, minimum=0)
    _check_count(row, "n", where, minimum=1)
    _check_count(row, "episodes", where, minimum=0)
    if row.get("kind") not in KINDS:
        raise SummaryError(f"{where}.kind: expected one of {list(KINDS)}, got {row.get('kind')!r}")
    if row["kind"] in SINGLE_KINDS and (row["n"] != 1 or row.get("prm") is not None):
        raise SummaryError(f"{where}: a {row['kind']} row has n=1 and prm=null, got n={row['n']}, "
                           f"prm={row.get('prm')!r}")
    if row["kind"] == "bon" and not (isinstance(row.get("prm"), str) and row["prm"]):
        raise SummaryError(f"{where}.prm: a bon row names its PRM (e.g. 'Q_0'), got {row.get('prm')!r}")
    _check_fraction(row.get("success"), f"{where}.success")
    ci95 = row.get("ci95")
    if not (isinstance(ci95, list) and len(ci95) == 2):
        raise SummaryError(f"{where}.ci95: expected [lo, hi], got {ci95!r}")
    _check_fraction(ci95[0], f"{where}.ci95[0]")
    _check_fraction(ci95[1], f"{where}.ci95[1]")
    if ci95[0] > ci95[1]:
        raise SummaryError(f"{where}.ci95: lo > hi in {ci95!r}")
    if not _is_number(row.get("mean_actions")) or row["mean_actions"] < 0:
        raise SummaryError(f"{where}.mean_actions: expected a number >= 0, got {row.get('mean_actions')!r}")
    _check_type(row, "by_task_type", dict, where)
    for task_type, value in row["by_task_type"].items():
        _check_fraction(value, f"{where}.by_task_type[{task_type!r}]")


def _check_type(data: dict, key: str, kind: type, where: str) -> None:
    if key not in data:
        raise SummaryError(f"{where}: missing field {key!r}")
    if not isinstance(data[key], kind):
        raise SummaryError(f"{where}.{key}: expected {kind.__name__}, got {data[key]!r}")


def _check_count(data: dict, key: str, where: str, minimum: int) -> None:
    _check_type(data, key, int, where)
    if isinstance(data[key], bool) or data[key] < minimum:
        raise SummaryError(f"{where}.{key}: expected an integer >= {minimum}, got {data[key]!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fraction(value: Any, where: str) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise SummaryError(f"{where}: expected a number in [0, 1], got {value!r}")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- plots -----------------------------------------------------------------------------------------------------------


def _new_axes(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    _atomic_write(Path(path), buffer.getvalue())
    return Path(path)


def _legend(axes: Any) -> None:
    """The legend to the right of the axes, so it never hides a point."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")


def _error_bars(rows: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """Asymmetric matplotlib ``yerr`` (in %) from each row's Wilson interval."""
    return [[100 * max(0.0, r["success"] - r["ci95"][0]) for r in rows],
            [100 * max(0.0, r["ci95"][1] - r["success"]) for r in rows]]


def _series(rows: Sequence[Mapping[str, Any]], key: Any) -> dict[Any, list[Mapping[str, Any]]]:
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def plot_success_per_iteration(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Success (%) per iteration: the policy and each Best-of-N size, with Wilson 95% error bars."""
    figure, axes = _new_axes()
    rows = [r for r in rows if r.get("iteration") is not None and r["kind"] in ("policy", "bon")]
    groups = _series(rows, lambda r: (KINDS.index(r["kind"]), r["n"]))
    for (kind, n), series in sorted(groups.items()):
        series = sorted(series, key=lambda r: r["iteration"])
        label = "policy" if KINDS[kind] == "policy" else f"BoN (N={n})"
        axes.errorbar([r["iteration"] for r in series], [100 * r["success"] for r in series],
                      yerr=_error_bars(series), marker="o", capsize=3, label=label)
    axes.set_xticks(sorted({r["iteration"] for r in rows}))
    axes.set(xlabel="iteration", ylabel="success (%)", ylim=(0, 100), title="Success per iteration")
    if rows:
        _legend(axes)
    return _save(figure, path)


def plot_best_of_n_curve(curve_rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Success (%) against N (log2 axis) for each BoN(pi_i, Q_j); a policy row is that policy's N = 1 point."""
    figure, axes = _new_axes()
    policies = {r["agent"]: r for r in curve_rows if r["kind"] == "policy"}
    groups = _series([r for r in curve_rows if r["kind"] == "bon"], lambda r: (r["agent"], r["prm"]))
    for (agent, prm), series in groups.items():
        if agent in policies and all(r["n"] != 1 for r in series):
            series = [policies[agent], *series]
        series = sorted(series, key=lambda r: r["n"])
        axes.errorbar([r["n"] for r in series], [100 * r["success"] for r in series], yerr=_error_bars(series),
                      marker="o", capsize=3, label=f"BoN({agent}, {prm})")
    values = sorted({int(r["n"]) for r in curve_rows} | set(BEST_OF_N_VALUES))
    axes.set_xscale("log", base=2)
    axes.set_xticks(values, [str(v) for v in values])
    axes.minorticks_off()
    axes.set(xlabel="N (samples per turn)", ylabel="success (%)", ylim=(0, 100), title="Best-of-N test-time scaling")
    if groups:
        _legend(axes)
    return _save(figure, path)


def plot_calibration(bins: Sequence[Mapping[str, Any]], path: str | Path, title: str = "PRM calibration",
                     ylabel: str = "MC target (mean per bin)") -> Path:
    """Reliability diagram: mean predicted Q against the mean target per bin (marker area ~ bin count): the MC
    target of the PRM's validation data, or the observed success of evaluation episodes."""
    needed = ("lo", "hi", "count", "mean_pred", "mean_target")
    for index, item in enumerate(bins):
        missing = [key for key in needed if key not in item]
        if missing:
            raise ValueError(f"calibration bin {index} lacks {missing}; expected keys {list(needed)}")
    used = [b for b in bins if b["count"] > 0]
    total = sum(b["count"] for b in used) or 1
    figure, axes = _new_axes(5.0, 5.0)
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.plot([b["mean_pred"] for b in used], [b["mean_target"] for b in used], color="C0")
    axes.scatter([b["mean_pred"] for b in used], [b["mean_target"] for b in used],
                 s=[20 + 300 * b["count"] / total for b in used], color="C0", zorder=3, label="bins")
    axes.set(xlabel="predicted Q (mean per bin)", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=title)
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_reward_hacking(readings: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                        selected: Mapping[str, int] | None = None) -> Path:
    """The reward-hacking monitor: validation PRM score (left) and true validation success (right) against the
    online-DPO step, one line per policy (``readings``: label -> ``[{"step", "prm_score", "success"}, ...]``);
    the kept reading of each policy (``selected``: label -> step) is ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for index, (label, series) in enumerate(readings.items()):
        series = sorted(series, key=lambda r: r["step"])
        steps = [r["step"] for r in series]
        left.plot(steps, [r["prm_score"] for r in series], marker="o", color=f"C{index}", label=label)
        right.plot(steps, [100 * r["success"] for r in series], marker="o", color=f"C{index}", label=label)
        kept = (selected or {}).get(label)
        for r in series:
            if r["step"] == kept:
                right.scatter([kept], [100 * r["success"]], s=160, facecolors="none", edgecolors=f"C{index}")
    left.set(xlabel="DPO step", ylabel="mean PRM score (validation states)", title="What the PRM sees")
    right.set(xlabel="DPO step", ylabel="success (%) on validation games", ylim=(0, 100),
              title="What is true (ringed: kept)")
    if readings:
        _legend(right)
    return _save(figure, path)


def task_type_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(task type, column name) pairs: all six ALFWorld types (paper's order and short names) as soon as one is
    present, then any other type in name order."""
    found = {t for row in rows for t in row["by_task_type"]}
    known = list(ALFWORLD_SHORT_NAMES.items()) if found & set(ALFWORLD_SHORT_NAMES) else []
    others = sorted(found - set(ALFWORLD_SHORT_NAMES))
    return known + [(t, t) for t in others]


def plot_task_types(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Grouped bars: success (%) per task type, one bar per row."""
    columns = task_type_columns(rows)
    figure, axes = _new_axes(min(12.0, max(6.0, 0.15 * len(columns) * len(rows) + 3)), 4.0)
    width = 0.8 / max(1, len(rows))
    for index, row in enumerate(rows):
        xs = [c + (index - (len(rows) - 1) / 2) * width for c in range(len(columns))]
        axes.bar(xs, [100 * row["by_task_type"].get(t, 0.0) for t, _ in columns], width, label=row_label(row))
    axes.set_xticks(range(len(columns)), [name for _, name in columns])
    axes.set(ylabel="success (%)", ylim=(0, 100), title="Success per task type")
    if rows:
        _legend(axes)
    return _save(figure, path)


# -- report.md -------------------------------------------------------------------------------------------------------


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Table-1-style markdown table: agent, (split, when rows come from several), success % (95% CI), mean
    actions, episodes, one column per task type."""
    columns = task_type_columns(rows)
    splits = len({row.get("split") for row in rows}) > 1
    distinct = any("distinct_candidates" in row for row in rows)  # Best-of-N: distinct actions per turn
    header = ["Agent", *(["Split"] if splits else []), "Success % (95% CI)", "Mean actions", "Episodes",
              *(["Distinct / turn"] if distinct else []), *[name for _, name in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + splits) + ["---:"] * (len(header) - 1
                                                                                              - splits)) + "|"]
    for row in rows:
        lo, hi = row["ci95"]
        cells = [row_label(row), *([str(row.get("split", ""))] if splits else []),
                 f"{100 * row['success']:.1f} ({100 * lo:.1f}–{100 * hi:.1f})",
                 f"{row['mean_actions']:.1f}", str(row["episodes"])]
        if distinct:
            cells.append(f"{row['distinct_candidates']:.2f}" if "distinct_candidates" in row else "–")
        cells += [f"{100 * row['by_task_type'][t]:.1f}" if t in row["by_task_type"] else "–" for t, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows the per-iteration and per-task-type plots show: every policy row and the BoN rows at the N most
    evaluated (the larger N on a tie), leaving out the extra points of a scaling curve."""
    counts: dict[int, int] = {}
    for row in rows:
        if row["kind"] == "bon":
            counts[row["n"]] = counts.get(row["n"], 0) + 1
    main_n = max(counts, key=lambda n: (counts[n], n)) if counts else None
    return [row for row in rows if row["kind"] != "bon" or row["n"] == main_n]


def _has_curve(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when some BoN(pi_i, Q_j) was evaluated at two or more N (counting the policy as N = 1)."""
    sizes: dict[tuple[str, str], set[int]] = {}
    policies = {r["agent"] for r in rows if r["kind"] == "policy"}
    for row in rows:
        if row["kind"] == "bon":
            sizes.setdefault((row["agent"], row["prm"]), {1} if row["agent"] in policies else set()).add(row["n"])
    return any(len(ns) > 1 for ns in sizes.values())


def write_plots(run_dir: str | Path, summary: Mapping[str, Any], split: str | None = None) -> list[Path]:
    """Draw the plots that ``summary`` supports into ``RUN/plots``: per iteration (when rows are iterations of a
    run), per task type, BoN curve; with ``split``, only that split's rows."""
    plots = Path(run_dir) / "plots"
    rows = [row for row in summary["rows"] if split is None or row.get("split", split) == split]
    if not rows:
        return []
    headline = headline_rows(rows)
    written = [plot_task_types(headline, plots / "task_types.png")]
    if any(row.get("iteration") is not None for row in rows):
        written.append(plot_success_per_iteration(headline, plots / "success_per_iteration.png"))
    if _has_curve(rows):
        written.append(plot_best_of_n_curve(rows, plots / "best_of_n.png"))
    return written


def write_report(run_dir: str | Path, summary: Mapping[str, Any] | str | Path,
                 extra_sections: Mapping[str, str] | None = None, plot_split: str | None = None) -> Path:
    """Write ``RUN/report.md`` (and the summary's plots); returns its path.

    ``summary`` is a summary dict or the path of a ``summary.json``. Every PNG in ``RUN/plots`` is embedded by
    relative path, including plots other stages wrote there (``calibration.png``, ...). ``extra_sections`` maps a
    section title to its markdown body (command lines, run time, ...), appended in order. ``plot_split``: plot only
    that split's rows (evaluations over several splits).
    """
    run_dir = Path(run_dir)
    if isinstance(summary, (str, Path)):
        summary = read_summary(summary)
    else:
        validate_summary(summary)
    write_plots(run_dir, summary, plot_split)
    lines = ["# agentprm results", "",
             f"Environment `{summary['env']}`, split `{summary['split']}`: {summary['eval_games']} evaluation games, "
             f"at most {summary['max_steps']} actions per game. Success with a Wilson 95% interval.", "",
             results_table(summary["rows"]), ""]
    for image in _plot_files(run_dir / "plots"):
        title = PLOT_TITLES.get(image.name, image.stem.replace("_", " ").capitalize())
        lines += [f"## {title}", "", f"![{title}](plots/{image.name})", ""]
    for title, body in (extra_sections or {}).items():
        lines += [f"## {title}", "", body.rstrip(), ""]
    path = run_dir / "report.md"
    _atomic_write(path, "\n".join(lines).encode("utf-8"))
    return path


def _plot_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    order = list(PLOT_TITLES)
    return sorted(folder.glob("*.png"), key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
