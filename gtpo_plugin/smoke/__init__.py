"""The one-GPU smoke run's Python parts (``recipes/run_smoke_1gpu.sh``): a tiny model, its problems, the checks.

- ``tiny_model``: a random-init Qwen2 causal LM of a few million parameters with a locally built tokenizer
  (chat template and the format tags as tokens), saved as a ``transformers`` folder; nothing is downloaded;
- ``problems``: synthetic addition problems as JSONL, which ``scripts/prepare_data.py`` turns into verl's
  RL parquet with the paper's prompt;
- ``report``: reads the runs' file-logger metrics and checkpoints, checks the ``gtpo/*`` metrics and the
  resumed ⟨H⟩_ini, and prints step time and peak GPU memory per arm.
Run as ``python -m gtpo_plugin.smoke {model,problems,check}``; imports neither verl nor Ray at import time.
"""
