"""Supervised warm-up: teach the format (and rough arithmetic) before reinforcement learning starts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gtpo_plugin.demo.model import next_token_logits
from gtpo_plugin.demo.task import MAX_OPERANDS, MIN_OPERANDS, STEP_FORMS, noisy_demonstration, sample_problems
from gtpo_plugin.demo.vocab import Vocab, pad_left, pad_right


def warm_up(
    model: torch.nn.Module,
    vocab: Vocab,
    *,
    steps: int,
    batch_size: int,
    noise: float,
    lr: float,
    generator: torch.Generator,
    on_step: Callable[[float], None] | None = None,
    min_operands: int = MIN_OPERANDS,
    max_operands: int = MAX_OPERANDS,
    forms: Sequence[str] = STEP_FORMS,
    cosine: bool = False,
) -> list[float]:
    """Cross-entropy on noisy demonstrations (see ``noisy_demonstration``); returns the loss per step.

    The targets are the completion tokens only; the prompt is context. Afterwards the model writes
    the format reliably but gets the sums right only part of the time, which leaves RL work to do.
    The demo uses the defaults; ``scripts/learning_probe.py`` varies the problems (operand range), the
    step ``forms`` and, with ``cosine``, decays the learning rate to 0 along a cosine.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps)) if cosine else 1.0)
    model.train()
    losses = []
    for _ in range(steps):
        problems = sample_problems(batch_size, generator, min_operands, max_operands)
        prompts, prompt_mask = pad_left([vocab.encode(p.prompt_tokens()) for p in problems], vocab.pad_id)
        targets = [vocab.encode(noisy_demonstration(p, generator, noise, forms)) for p in problems]
        responses, response_mask = pad_right(targets, vocab.pad_id)
        ids = torch.cat([prompts, responses], dim=1).to(device)
        mask = torch.cat([prompt_mask, torch.ones_like(responses)], dim=1).to(device)
        logits = next_token_logits(model, ids, mask)[:, prompts.shape[1] - 1 : -1]
        token_loss = F.cross_entropy(logits.transpose(1, 2), responses.to(device), reduction="none")
        weights = response_mask.to(device, logits.dtype)
        loss = (token_loss * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(losses[-1])
    return losses
