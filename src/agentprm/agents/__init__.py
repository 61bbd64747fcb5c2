"""Agents that act in the batched runner: the policy agent (here), later Best-of-N and steered agents."""
