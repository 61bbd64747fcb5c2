"""Stages that put the layers together: expert demonstrations (``demos``), terminal play (``play``); later the
AgentPRM iteration loop, rollouts, evaluation and reports."""
