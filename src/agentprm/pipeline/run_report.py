"""The end of ``agentprm run``: ``summary.json``, ``metrics.jsonl``, plots and ``report.md`` from the stage folders.

Everything here is rebuilt from finished stage folders, so it is the same whether the run went straight through or
was interrupted and resumed; ``agentprm report RUN`` can call it again at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

from agentprm.pipeline.report import plot_calibration, plot_reward_hacking, write_report, write_summary
from agentprm.pipeline.stages import stage_seconds

def _check_metric_line(source: Path, number: int, line: str) -> None:
    from agentprm.errors import damaged

    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not {"stage", "name", "step", "value"} <= set(value):
        raise damaged(source, f"line {number} is not a metric record (torn or edited by hand)")


STAGE_ORDER = ("games", "demos", "model_init", "policy", "eval", "rollouts", "targets", "prm")


def _iterations(run_dir: Path) -> list[Path]:
    folders = [p for p in run_dir.glob("iter_*") if p.is_dir() and p.name.split("_")[1].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("_")[1]))


def collect_rows(run_dir: Path) -> list[dict]:
    """Headline rows in iteration order, then the final Best-of-N curve (rows already present are not repeated)."""
    rows: list[dict] = []
    for folder in _iterations(run_dir) + [run_dir / "final_eval"]:
        path = folder / "rows.json" if folder.name == "final_eval" else folder / "eval" / "rows.json"
        if path.is_file():
            for row in json.loads(path.read_text()):
                key = (row["agent"], row["kind"], row["n"], row["prm"])
                if all((r["agent"], r["kind"], r["n"], r["prm"]) != key for r in rows):
                    rows.append(row)
    return rows


def compile_metrics(run_dir: Path) -> int:
    """Concatenate every stage's ``metrics.jsonl`` into ``RUN/metrics.jsonl`` in stage order; return line count."""
    sources = []
    for folder in [run_dir / "iter_0"] + _iterations(run_dir)[1:]:
        for stage in ("policy", "rollouts", "targets", "prm", "eval"):
            sources += sorted((folder / stage).glob("**/metrics.jsonl"))
    lines = []
    for source in sources:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if line.strip():
                _check_metric_line(source, number, line)
                lines.append(line)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


STAGE_ORDER = ("rollouts", "targets", "prm", "policy", "eval")  # the order an iteration runs its stages in


def _stage_table(run_dir: Path) -> str:
    rows = ["| stage | seconds |", "|---|---|"]
    total = 0.0
    for folder in [run_dir / "games", run_dir / "demos", run_dir / "model_init"]:
        if folder.is_dir():
            seconds = stage_seconds(folder)
            total += seconds
            rows.append(f"| {folder.name} | {seconds:.0f} |")
    for iteration in _iterations(run_dir) + [run_dir / "final_eval"]:
        order = {name: k for k, name in enumerate(STAGE_ORDER)}
        stages = [iteration] if iteration.name == "final_eval" else sorted(
            (p for p in iteration.iterdir() if p.is_dir()), key=lambda p: (order.get(p.name, len(order)), p.name))
        for folder in stages:
            if (folder / "stage.json").is_file():
                seconds = stage_seconds(folder)
                total += seconds
                name = folder.name if folder == iteration else f"{iteration.name}/{folder.name}"
                rows.append(f"| {name} | {seconds:.0f} |")
    rows.append(f"| **all stages** | **{total:.0f}** |")
    return "\n".join(rows)


def _training_notes(run_dir: Path) -> str:
    notes = []
    for iteration in _iterations(run_dir)[1:]:
        i = int(iteration.name.split("_")[1])
        targets = _read(iteration / "targets" / "targets.json")
        validation = _read(iteration / "prm" / "validation.json")
        dpo = _read(iteration / "policy" / "dpo_summary.json")
        kl = _read(iteration / "policy" / "kl_summary.json")
        if targets:
            notes.append(f"- iteration {i}: {targets['episodes']} rollouts of pi_{i - 1}, success "
                         f"{targets['episode_success']:.1%}; {targets['keys']} (state, action) keys, mean Q_hat "
                         f"{targets['mean_q']:.3f}")
        if validation:
            shown = {k: v for k, v in validation.items() if isinstance(v, (int, float))}
            notes.append(f"- Q_{i - 1} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
        if dpo:
            shown = {k: v for k, v in dpo.items() if isinstance(v, (int, float))}
            notes.append(f"- pi_{i} online DPO: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
        if kl:
            shown = {k: v for k, v in {**kl, **kl.get("final", {})}.items() if isinstance(v, (int, float))}
            notes.append(f"- pi_{i} KL step: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
        monitor = (dpo or kl or {}).get("monitor")
        if monitor and monitor.get("readings"):
            readings = ", ".join(f"{r['step']}: {r['prm_score']:.3f}/{r['success']:.0%}" for r in monitor["readings"])
            notes.append(f"- pi_{i} monitor (step: validation PRM score/success): {readings}; kept the "
                         f"{monitor.get('kept', 'last')} reading, step {monitor['selected_step']}"
                         + (f" (the best at step {monitor['best_step']})"
                            if monitor.get("best_step", monitor["selected_step"]) != monitor["selected_step"] else "")
                         + (f"; reward-hacking warnings at steps {monitor['hacking_warnings']}"
                            if monitor.get("hacking_warnings") else ""))
    return "\n".join(notes)


def _plot_monitor(run_dir: Path, iterations: list[Path]) -> None:
    """``plots/reward_hacking.png`` from the monitor readings of every iteration's online DPO, if any."""
    readings, selected = {}, {}
    for iteration in iterations:
        monitor = (_read(iteration / "policy" / "dpo_summary.json")
                   or _read(iteration / "policy" / "kl_summary.json")).get("monitor")
        if monitor and monitor.get("readings"):
            label = f"pi_{iteration.name.split('_')[1]}"
            readings[label] = monitor["readings"]
            if monitor.get("kept") == "best":
                selected[label] = monitor["selected_step"]
    if readings:
        plot_reward_hacking(readings, run_dir / "plots" / "reward_hacking.png", selected)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _calibration_bins(validation: dict) -> list[dict]:
    for key in ("calibration", "calibration_bins", "bins"):
        if isinstance(validation.get(key), list):
            return validation[key]
    return []


def write_run_report(run_dir: Path, config, seconds: float | None) -> dict:
    """Rebuild summary.json, metrics.jsonl, plots and report.md of ``run_dir``; return the summary.

    ``seconds``: how long the ``agentprm run`` invocation that finished the run took (None when ``agentprm report``
    rebuilds the report: the stage table still has every stage's time)."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    eval_games = rows[0]["episodes"] if rows else 0
    write_summary(run_dir / "summary.json", config.games.env, config.games.eval_split, eval_games,
                  config.eval.max_steps, rows)
    compile_metrics(run_dir)
    iterations = _iterations(run_dir)[1:]
    if iterations:
        bins = _calibration_bins(_read(iterations[-1] / "prm" / "validation.json"))
        if bins:
            plot_calibration(bins, run_dir / "plots" / "calibration.png")
    _plot_monitor(run_dir, iterations)
    sections = {
        "Run": (f"`agentprm run` in `{run_dir}`; "
                + (f"this invocation took {seconds:.0f} s. " if seconds is not None
                   else "report rebuilt by `agentprm report`. ")
                + "The resolved config is `config.yaml`; versions and seed are in `manifest.json`."),
        "Stages": _stage_table(run_dir),
    }
    notes = _training_notes(run_dir)
    if notes:
        sections["Training"] = notes
    write_report(run_dir, run_dir / "summary.json", sections)
    return json.loads((run_dir / "summary.json").read_text())
