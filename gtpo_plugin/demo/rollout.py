"""Rollouts: sample a group of completions per prompt from the policy and pack them as verl's ``DataProto``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import StaticCache
from verl import DataProto

from gtpo_plugin.demo.model import response_log_probs
from gtpo_plugin.demo.task import Grade, Problem, grade
from gtpo_plugin.demo.vocab import Vocab, pad_left, pad_right

# A reward computed on a completion's tokens, its problem and the task's grade of it (for tests and probes).
RewardFn = Callable[[Sequence[str], Problem, Grade], float]


@dataclass
class Rollout:
    """One batch of groups: ``len(problems) * group_size`` completions, a group's rows contiguous."""

    problems: list[Problem]
    group_size: int
    data: DataProto
    grades: list[Grade]
    rewards: list[float]


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    generator: torch.Generator | None,
    temperature: float = 1.0,
) -> list[list[int]]:
    """Sample one completion per prompt row at ``temperature``, each ending at ``<eos>`` or ``max_new_tokens``.

    ``generator=None`` decodes greedily (the most likely token) instead, for evaluation. See
    :func:`sample_with_log_probs`, which this calls.
    """
    rows, _ = sample_with_log_probs(model, prompts, prompt_mask, eos_id=eos_id, pad_id=pad_id,
                                    max_new_tokens=max_new_tokens, generator=generator, temperature=temperature)
    return rows


@torch.no_grad()
def sample_with_log_probs(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    generator: torch.Generator | None,
    temperature: float = 1.0,
) -> tuple[list[list[int]], list[list[float]]]:
    """:func:`sample`, also returning the sampler's own log-probability of each token it drew.

    The log-probabilities are those of the distribution drawn from, softmax(logits / ``temperature``),
    taken in the cached decoding loop: the rollout engine's log-probs, which the trainer's teacher-forced
    recomputation must reproduce (the demo's ``demo/rollout_probs_diff_max``). Keys and values are
    cached, so a batch of B rows costs B·(prompt + max_new_tokens) token forwards. Sampling draws from
    ``generator`` on the CPU so that runs repeat exactly on any device; the draws depend only on the batch
    shape, so two policies that agree sample the same tokens.
    """
    batch, prompt_length = prompts.shape
    mask = prompt_mask
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    # A cache of fixed size, written in place: a growing cache re-copies itself at every token (O(T^2)).
    config: Any = model.config  # a transformers causal LM's config
    cache = StaticCache(config=config, max_cache_len=prompt_length + max_new_tokens)
    output = model(input_ids=prompts, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   cache_position=torch.arange(prompt_length, device=prompts.device), use_cache=True)
    next_position = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool)
    lengths = torch.zeros(batch, dtype=torch.long)
    token_columns: list[torch.Tensor] = []
    log_prob_columns: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = output.logits[:, -1].float().cpu()
        if generator is None:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(1)
        token_columns.append(tokens)
        log_prob_columns.append(torch.log_softmax(logits / temperature, dim=-1).gather(1, tokens[:, None]).squeeze(1))
        lengths += ~done  # a row keeps the token drawn at the step it ends (<eos>), nothing after it
        tokens = torch.where(done, pad_id, tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        where = torch.tensor([prompt_length + step], device=prompts.device)
        output = model(input_ids=tokens[:, None].to(prompts.device), attention_mask=mask, position_ids=next_position,
                       past_key_values=cache, cache_position=where, use_cache=True)
        next_position = next_position + 1
    if not token_columns:  # max_new_tokens == 0
        return [[] for _ in range(batch)], [[] for _ in range(batch)]
    drawn_tokens = torch.stack(token_columns, dim=1).tolist()
    drawn_log_probs = torch.stack(log_prob_columns, dim=1).tolist()
    ends = lengths.tolist()
    return ([row[:end] for row, end in zip(drawn_tokens, ends, strict=True)],
            [row[:end] for row, end in zip(drawn_log_probs, ends, strict=True)])


def response_checksum(responses: torch.Tensor) -> float:
    """A fingerprint of the sampled token ids (exact in float64): equal batches give equal values."""
    flat = responses.detach().cpu().long().flatten()
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.long) % 1_000_003
    return float(int((flat * weights).sum()) % 2_147_483_647)


def rollout(
    model: torch.nn.Module,
    vocab: Vocab,
    problems: list[Problem],
    *,
    group_size: int,
    max_new_tokens: int,
    generator: torch.Generator,
    step: int,
    reward: str | RewardFn,
    temperature: float,
) -> Rollout:
    """Sample ``group_size`` completions per problem, grade them and build the verl batch.

    The ``DataProto`` holds verl's names: ``prompts``, ``responses`` ``[B, L]`` (right-padded),
    ``response_mask``, ``token_level_rewards`` (the reward on each completion's last valid token: of kind
    ``reward``, or ``reward(tokens, problem, grade)`` when it is a function), ``old_log_probs`` and
    ``entropy`` of the sampling distribution (one teacher-forced pass at ``temperature``, as verl's actor
    recomputes them), ``rollout_log_probs`` (the sampler's own log-probs of the drawn tokens, as verl's
    rollout engines return them), and ``uid`` per row (one id per prompt: the GRPO/GTPO group).
    """
    device = next(model.parameters()).device
    repeated = [problem for problem in problems for _ in range(group_size)]
    prompt_ids, prompt_mask = pad_left([vocab.encode(p.prompt_tokens()) for p in repeated], vocab.pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    was_training = model.training
    model.eval()
    rows, sampler_log_probs = sample_with_log_probs(
        model, prompt_ids, prompt_mask, eos_id=vocab.eos_id, pad_id=vocab.pad_id, max_new_tokens=max_new_tokens,
        generator=generator, temperature=temperature)
    responses, response_mask = pad_right(rows, vocab.pad_id, width=max_new_tokens)
    rollout_log_probs = torch.zeros(responses.shape, dtype=torch.float32)
    for i, values in enumerate(sampler_log_probs):
        rollout_log_probs[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
    responses, response_mask = responses.to(device), response_mask.to(device)
    with torch.no_grad():
        old_log_probs, entropy = response_log_probs(model, prompt_ids, prompt_mask, responses,
                                                    temperature=temperature, with_entropy=True)
    assert entropy is not None
    model.train(was_training)

    grades = [grade(vocab.decode(row), problem) for row, problem in zip(rows, repeated, strict=True)]
    if callable(reward):
        values = [float(reward(vocab.decode(row), problem, g)) for row, problem, g in zip(rows, repeated, grades,
                                                                                         strict=True)]
    else:
        values = [g.reward(reward) for g in grades]
    rewards = torch.tensor(values, dtype=torch.float32, device=device)
    lengths = response_mask.sum(dim=1)
    token_level_rewards = torch.zeros(responses.shape, dtype=torch.float32, device=device)
    has_tokens = lengths > 0
    rows_with_tokens = torch.nonzero(has_tokens).flatten()
    token_level_rewards[rows_with_tokens, lengths[has_tokens] - 1] = rewards[has_tokens]

    uid = np.array([f"step{step}-prompt{i // group_size}" for i in range(len(repeated))], dtype=object)
    data = DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "prompt_mask": prompt_mask,
            "responses": responses,
            "response_mask": response_mask,
            "token_level_rewards": token_level_rewards,
            "old_log_probs": old_log_probs,
            "rollout_log_probs": rollout_log_probs.to(device),
            "entropy": entropy * response_mask,
        },
        non_tensors={"uid": uid},
        meta_info={"temperature": temperature},
    )
    return Rollout(problems=problems, group_size=group_size, data=data, grades=grades, rewards=values)
