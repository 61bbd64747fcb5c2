"""Agents that act in the batched runner: the policy agent and the PRM-guided Best-of-N agent."""
