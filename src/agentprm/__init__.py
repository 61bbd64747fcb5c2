"""agentprm: process reward models for LLM agents (AgentPRM, InversePRM, PRM-guided Best-of-N)."""

__version__ = "0.1.0"
