"""The decisions Best-of-N faces, ranked by Monte Carlo Q (``agents.lookahead``): what kind of actions they are.

Plays BoN(pi_I, MC Q) (``eval_noise.py`` agent ``mc:I:N:M``) on a run's evaluation games with one seed, keeps every
decision (two or more distinct candidates) with its candidates' log pi and Q_hat, and counts the contested ones
(Q_hat not all equal) by (the policy's pick's verb, the MC pick's verb, whether they agree); ``go`` is ``go to``.

    PYTHONPATH=src python benchmarks/bon_decisions.py --run RUN --agent mc:0:16:4 --seed 1 --out decisions.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
from pathlib import Path

import eval_noise


def verb(action: str) -> str:
    return "go" if action.startswith("go to") else action.split()[0]


def main(argv=None) -> None:
    from agentprm.agents.best_of_n import representatives
    from agentprm.config import load_config
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--agent", default="mc:0:16:4")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = load_config(RunConfig, Path(args.run) / "config.yaml")
    ctx = RunContext(config, Path(args.run), log=lambda message: None)
    decisions = []
    with contextlib.ExitStack() as stack:
        agent = eval_noise.lookahead_agent(ctx, eval_noise.parse_lookahead(args.agent), args.seed, stack)
        score = agent._score

        def keep(states, prompts, batch, candidates):
            score(states, prompts, batch, candidates)
            for item, slot in zip(batch, candidates):
                chosen = representatives(slot, item.observation.admissible_actions)
                if len(chosen) > 1:
                    decisions.append({"game": item.game.game_id, "step": item.step, "task": item.observation.task,
                                      "candidates": [[slot[i].action, slot[i].logprob, slot[i].score]
                                                     for i in chosen]})

        agent._score = keep
        evaluation = evaluate_policy(config.games.env, ctx.eval_games(), agent, args.agent,
                                     max_steps=config.eval.max_steps, num_envs=config.num_envs,
                                     workers=config.workers, seed=args.seed)
    kinds = collections.Counter()
    for d in decisions:
        values = [c[2] for c in d["candidates"]]
        if max(values) > min(values):
            policy = max(d["candidates"], key=lambda c: c[1])[0]
            best = max(d["candidates"], key=lambda c: c[2])[0]
            kinds[f"{verb(policy)} -> {verb(best)} ({'same' if policy == best else 'overruled'})"] += 1
    summary = {"success": evaluation.success, "decisions": len(decisions), "contested": sum(kinds.values()),
               "kinds": dict(kinds.most_common())}
    Path(args.out).write_text(json.dumps({"summary": summary, "decisions": decisions}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
