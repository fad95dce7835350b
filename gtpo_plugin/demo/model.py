"""The policy: a tiny Llama-architecture causal LM built from a config in code (no download), and its forward."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits


def build_model(vocab_size: int, seed: int, *, hidden_size: int = 128, layers: int = 2) -> LlamaForCausalLM:
    """A seeded, randomly initialised Llama: 2 layers, width 128, 4 heads (335k parameters with the demo's vocab)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,  # prompt + completion; DemoOptions checks they fit
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` for every position of left-padded ``ids`` (positions count real tokens only)."""
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids).logits


def response_log_probs(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(o_t | q, o_<t) of each response token ``[B, L]`` and, if asked, the entropy ``[B, L]`` (nats).

    One teacher-forced pass over ``[prompt | response]`` (prompts left-padded, responses right-padded),
    with verl's own ``logprobs_from_logits``/``entropy_from_logits``; values on padding are meaningless
    and are masked by the caller. As verl's actor does, the logits are divided by the rollout
    ``temperature`` first, so log-probabilities and entropy are those of the sampling distribution.
    The entropy is detached (GTPO reads it without gradient).
    """
    ids = torch.cat([prompts, responses], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(responses)], dim=1)
    logits = next_token_logits(model, ids, mask)[:, prompts.shape[1] - 1 : -1]
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = logprobs_from_logits(logits, responses)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return log_probs, entropy
