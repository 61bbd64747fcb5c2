"""SFT on rationalised demonstrations against SFT on bare actions, on the quickstart's world, graded on valid_seen.

Every variant is ``agentprm run configs/quickstart.yaml iterations=0`` (games -> demonstrations -> model -> SFT pi_0
-> evaluation), evaluated on ``--seen`` valid_seen games (the unseen evaluation games are never touched), all on the
same games (the first run generates them; the others read them with ``games.root``):

- ``action_only``: the quickstart's pi_0 (bare command, admissible mode);
- ``reason_action, bare``: REASON/ACTION template on the expert's demonstrations, which carry no reason (the
  targets are "ACTION: <a>"), free generation + parser;
- ``reason_action, rationalised``: the same template with ``rationalise.enabled`` (SmolLM2-135M-Instruct from the
  wheel writes a reason for every step), free generation: the model writes a reason, then its action;
- ``reason_action, rationalised, admissible``: that model's actions scored directly after the prompt (the
  rationalised demonstrations are reused, not generated again: the stage resumes from the finished file).

    PYTHONPATH=src python benchmarks/rationalise_sft.py --work /tmp/rationalise \\
        --results benchmarks/results/rationalise_sft.json

It prints and saves each variant's success rate with its Wilson 95% interval, and the rationalisation's throughput
and flag counts (``RUN/rationales/demos.summary.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = [  # name, overrides
    ("action_only", ["prompt.template=action_only"]),
    ("reason_action, bare", ["prompt.template=reason_action", "policy.mode=free", "policy_step=dpo"]),
    ("reason_action, rationalised", ["prompt.template=reason_action", "policy.mode=free", "policy_step=dpo",
                                     "rationalise.enabled=true"]),
    ("reason_action, rationalised, admissible", ["prompt.template=reason_action", "rationalise.enabled=true"]),
]


def run(out: Path, overrides: list[str], log: Path) -> float:
    command = [sys.executable, "-m", "agentprm.cli", "run", str(ROOT / "configs" / "quickstart.yaml"), "--out",
               str(out), "progress=false", *overrides]
    started = time.perf_counter()
    with open(log, "a") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/agentprm-rationalise")
    parser.add_argument("--seen", type=int, default=100, help="valid_seen games generated and evaluated")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="rationaliser's answer cap")
    parser.add_argument("--history-window", type=int, default=1,
                        help="rationaliser's history (a CPU's prefill time grows with it)")
    parser.add_argument("--results", default="")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    common = ["iterations=0", f"games.seen={args.seen}", "games.eval_split=seen", f"games.eval_games={args.seen}",
              f"rationalise.max_new_tokens={args.max_new_tokens}", f"rationalise.history_window={args.history_window}"]
    rows = []
    for index, (name, overrides) in enumerate(VARIANTS):
        out = work / f"v{index}"
        shared = [] if index == 0 else [f"games.root={work / 'v0' / 'games'}"]
        if name.endswith("admissible") and not (out / "rationales").is_dir():  # reuse v2's reasons: a resumed stage
            (out / "rationales.partial").mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "v2" / "rationales" / "demos.jsonl", out / "rationales.partial" / "demos.jsonl")
        seconds = run(out, common + shared + overrides, log)
        summary = json.loads((out / "summary.json").read_text())
        (row,) = [r for r in summary["rows"] if r["agent"] == "pi_0"]
        rows.append({"variant": name, "overrides": overrides, "success": row["success"], "ci95": row.get("ci95"),
                     "episodes": row["episodes"], "mean_actions": row.get("mean_actions"), "seconds": round(seconds, 1)})
        print(f"{name}: {row['success']:.1%} {row.get('ci95')} on {row['episodes']} valid_seen games "
              f"({seconds:.0f} s)", flush=True)
    rationales = json.loads((work / "v2" / "rationales" / "demos.summary.json").read_text())
    result = {"world": "configs/quickstart.yaml", "split": "valid_seen", "games": args.seen, "common": common,
              "rows": rows,
              "rationalisation": {k: rationales[k] for k in ("rationaliser", "episodes", "steps", "ok", "flagged",
                                                            "seconds", "steps_per_s", "usage")}}
    print(json.dumps(result["rationalisation"], indent=1))
    if args.results:
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
