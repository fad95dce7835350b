"""Time GTPO's advantage computation next to verl's own GRPO estimators on the same batch.

Usage:
    python scripts/bench_core.py                       # 256 groups x 16 completions x 4,096 tokens
    python scripts/bench_core.py --groups 64 --length 1024 --repeats 5
    python scripts/bench_core.py --device cuda         # the same batch on the GPU (timed after a synchronize)

The batch looks like a real one: a shared format opening and closing in every completion (so
conflicts exist), random lengths, binary rewards, a 151,936-token vocabulary. The "holed" rows use
the same batch as a multi-turn one: ``--tool-turns`` spans of tool tokens (response_mask 0, up to
``--tool-length`` tokens each) are cut into every completion between its opening and its closing.
Every row of the printed table is timed in this one run, on this machine, so the ratios compare like
with like.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from gtpo_plugin import compute_gtpo_advantage


def make_batch(groups: int, group_size: int, length: int, vocab: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch_size = groups * group_size
    responses = torch.randint(0, vocab, (batch_size, length), generator=generator)
    opening, closing = torch.randint(0, vocab, (8,), generator=generator), torch.randint(0, vocab, (6,),
                                                                                         generator=generator)
    lengths = torch.randint(length // 4, length + 1, (batch_size,), generator=generator)
    responses[:, :8] = opening
    rows = torch.arange(batch_size)
    for back, token in enumerate(closing.flip(0)):
        responses[rows, lengths - 1 - back] = token
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
    responses = responses * mask
    rewards = torch.zeros(batch_size, length)
    rewards[rows, lengths - 1] = torch.randint(0, 2, (batch_size,), generator=generator).float()
    entropy = torch.rand(batch_size, length, generator=generator)
    index = np.array([f"uid-{i // group_size}" for i in range(batch_size)], dtype=object)
    return dict(token_level_rewards=rewards, response_mask=mask, responses=responses, index=index, entropy=entropy)


def with_tool_turns(batch: dict, turns: int, max_length: int, seed: int) -> dict:
    """The same batch with ``turns`` tool spans per row (mask 0 inside the completion), opening and closing kept."""
    generator = torch.Generator().manual_seed(seed + 1)
    mask = batch["response_mask"]
    batch_size, length = mask.shape
    lengths = mask.sum(dim=1)
    columns = torch.arange(length)[None, :]
    holed = mask.clone()
    for _ in range(turns):
        span = torch.randint(1, max_length + 1, (batch_size, 1), generator=generator)
        room = (lengths[:, None] - 6 - 8 - span).clamp(min=1)
        start = 8 + (torch.rand(batch_size, 1, generator=generator) * room).long()
        holed[(columns >= start) & (columns < start + span) & (columns < lengths[:, None] - 6)] = 0
    return dict(batch, response_mask=holed)


def on_device(batch: dict, device: str) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def best_and_median(function: Callable[[], object], repeats: int, device: str = "cpu") -> tuple[float, float]:
    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    function()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tool-turns", type=int, default=3, help="tool spans per completion in the holed rows")
    parser.add_argument("--tool-length", type=int, default=256, help="longest tool span, tokens")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the batch lives (cpu)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    from verl.trainer.ppo import core_algos

    batch = make_batch(args.groups, args.group_size, args.length, args.vocab, args.seed)
    holed = on_device(with_tool_turns(batch, args.tool_turns, args.tool_length, args.seed), args.device)
    batch = on_device(batch, args.device)
    rewards, mask, index = batch["token_level_rewards"], batch["response_mask"], batch["index"]

    def gtpo(mode: str, inputs: dict = batch) -> Callable[[], object]:
        return lambda: compute_gtpo_advantage(**inputs, initial_entropy=0.5, entropy_threshold=math.log(2),
                                              conflict_mode=mode)

    candidates = {
        "verl grpo": lambda: core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, index),
        "verl grpo_vectorized": lambda: core_algos.compute_grpo_vectorized_outcome_advantage(
            rewards.clone(), mask, index),
        "gtpo prefix_suffix (default)": gtpo("prefix_suffix"),
        "gtpo none": gtpo("none"),
        "gtpo any": gtpo("any"),
        "verl grpo, holed": lambda: core_algos.compute_grpo_outcome_advantage(
            rewards.clone(), holed["response_mask"], index),
        "gtpo prefix_suffix, holed": gtpo("prefix_suffix", holed),
        "gtpo none, holed": gtpo("none", holed),
        "gtpo any, holed": gtpo("any", holed),
    }
    print(f"batch: {args.groups} groups x {args.group_size} completions x {args.length} tokens "
          f"= {rewards.numel():,} token slots on {args.device}, torch threads {torch.get_num_threads()}; holed: "
          f"{args.tool_turns} tool spans of up to {args.tool_length} tokens per completion, "
          f"{1 - float(holed['response_mask'].sum()) / float(mask.sum()):.0%} of the model tokens masked")
    baseline = None
    print(f"{'estimator':32s} {'best s':>9s} {'median s':>9s} {'x verl grpo':>12s}")
    for name, function in candidates.items():
        best, median = best_and_median(function, args.repeats, args.device)
        baseline = baseline or best
        print(f"{name:32s} {best:9.3f} {median:9.3f} {best / baseline:12.2f}")


if __name__ == "__main__":
    main()
