"""One data-parallel rank of verl's actor update on CPU, for test_verl_data_parallel.py.

Run as ``python dp_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE``. It joins a gloo process group of
WORLD_SIZE processes, takes its contiguous share of one fixed global mini-batch (as verl's dispatch
splits a mini-batch over data-parallel ranks), and does what verl's FSDP engine does in
``forward_backward_batch``: all-reduce the share's valid-token count into ``batch_num_tokens``,
set ``dp_size`` and the trainer's ``global_batch_size`` (sequences in the global mini-batch),
split the share into micro-batches, run verl's ``ppo_loss`` on each and back-propagate, then
average the parameter gradients over the ranks (the all-reduce FSDP/DDP do). The policy is a
small bigram language model in float64, the same on every rank; its log-probs are laid out as
verl's engines return them (one flat tensor over every prompt+response token, shifted by one).
It saves ``{case: {"loss": summed micro-batch losses, "grads": {name: tensor}}}`` for every case
of :data:`CASES`, and for those of :data:`UNEVEN_CASES` under ``("uneven", *case)``, to OUT_FILE.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

VOCAB, WIDTH = 11, 6
PROMPT_LENS = (3, 2, 4, 1, 2, 5, 3, 2)
RESPONSE_LENS = (4, 1, 6, 3, 5, 2, 6, 4)
MICRO_BATCH_SIZE = 2
# (policy loss, loss_agg_mode, loss_scale_factor): every mode verl 0.9's agg_loss accepts, for GTPO's
# loss and for verl's own vanilla loss (the control). seq-mean-token-sum-norm divides by the padded
# length of each micro-batch unless loss_scale_factor is set, so it is data-parallel invariant only then.
AGG_MODES = (
    ("token-mean", None),
    ("token-sum", None),
    ("seq-mean-token-sum", None),
    ("seq-mean-token-mean", None),
    ("seq-mean-token-sum-norm", 16.0),
)
# The last element says what batch info the loss gets: "global" as verl's engines pass it, or "local"
# (dp_size 1 and this rank's own token and sequence counts), a deliberately wrong control that shows
# the comparison can fail.
CASES = tuple((loss, agg, factor, "global") for loss in ("gtpo", "vanilla") for agg, factor in AGG_MODES)
CASES += (("gtpo", "token-mean", None, "local"), ("gtpo", "token-sum", None, "local"))
# seq-mean-token-sum-norm with and without loss_scale_factor, in micro-batches of 3: one rank then splits
# its 8 sequences into 3 + 3 + 2, two ranks their 4 each into 3 + 1, so the micro-batches' padded lengths
# (verl's divisor when the factor is unset) differ between the two runs. Micro-batches of 2 would group
# the same pairs at both sizes and hide the dependence.
UNEVEN_MICRO_BATCH_SIZE = 3
UNEVEN_CASES = tuple(("gtpo", "seq-mean-token-sum-norm", factor, "global") for factor in (None, 16.0))


class BigramPolicy(torch.nn.Module):
    """log π(next token | token): an embedding and an output layer, float64."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, WIDTH, generator=generator, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(WIDTH, VOCAB, generator=generator, dtype=torch.float64) / 2)

    def flat_log_probs(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        """verl's layout: position k of each prompt+response sequence holds log π(token k+1); the last holds 0."""
        chunks = []
        for tokens in sequences:
            log_probs = torch.log_softmax(self.embed[tokens[:-1]] @ self.out, dim=-1)
            chunks.append(torch.cat([log_probs.gather(1, tokens[1:, None])[:, 0], log_probs.new_zeros(1)]))
        return torch.cat(chunks)


def global_mini_batch() -> list[dict[str, torch.Tensor]]:
    """The same 8 sequences on every rank: prompt, response, old log-probs and per-token advantages."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for prompt_len, response_len in zip(PROMPT_LENS, RESPONSE_LENS, strict=True):
        rows.append({
            "prompt": torch.randint(0, VOCAB, (prompt_len,), generator=generator),
            "response": torch.randint(0, VOCAB, (response_len,), generator=generator),
            # log-ratios of a few tenths, so that some tokens are clipped at 1 ± 0.2
            "old_shift": 0.3 * torch.randn(response_len, generator=generator, dtype=torch.float64),
            "advantages": torch.randn(response_len, generator=generator, dtype=torch.float64),
        })
    return rows


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def engine_micro_batch(model: BigramPolicy, rows: list[dict[str, torch.Tensor]], *, dp_size: int,
                       batch_num_tokens: int, global_batch_size: int):
    """The TensorDict an engine hands ppo_loss (nested fields plus the global batch info) and the log-probs."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    flat = model.flat_log_probs([torch.cat([row["prompt"], row["response"]]) for row in rows])
    with torch.no_grad():
        current, offset = [], 0
        for row in rows:
            start = offset + len(row["prompt"]) - 1
            current.append(flat[start:start + len(row["response"])])
            offset += len(row["prompt"]) + len(row["response"])
    data = TensorDict({
        "prompts": nested([row["prompt"] for row in rows]),
        "responses": nested([row["response"] for row in rows]),
        "response_mask": nested([torch.ones(len(row["response"]), dtype=torch.long) for row in rows]),
        "old_log_probs": nested([c + row["old_shift"] for c, row in zip(current, rows, strict=True)]),
        "advantages": nested([row["advantages"] for row in rows]),
    }, batch_size=len(rows))
    tu.assign_non_tensor(data, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                         global_batch_size=global_batch_size)
    return data, flat


def actor_update(rank: int, world_size: int, loss_mode: str, agg: str, factor: float | None, info: str,
                 micro_batch_size: int = MICRO_BATCH_SIZE) -> dict:
    """One mini-batch of the FSDP engine's forward_backward_batch for this rank; the DP-averaged gradients."""
    import verl  # noqa: F401  (loads the GTPO plugin through verl's entry point)
    from verl.workers.config import FSDPActorConfig
    from verl.workers.config.actor import PolicyLossConfig
    from verl.workers.utils.losses import ppo_loss

    rows = global_mini_batch()
    share = len(rows) // world_size
    mine = rows[rank * share:(rank + 1) * share]
    local_tokens = sum(len(row["response"]) for row in mine)
    global_tokens = torch.tensor(local_tokens)
    dist.all_reduce(global_tokens, op=dist.ReduceOp.SUM)
    if info == "global":
        batch_info = {"dp_size": world_size, "batch_num_tokens": int(global_tokens), "global_batch_size": len(rows)}
    else:
        batch_info = {"dp_size": 1, "batch_num_tokens": local_tokens, "global_batch_size": len(mine)}
    config = FSDPActorConfig(strategy="fsdp", policy_loss=PolicyLossConfig(loss_mode=loss_mode),
                             ppo_mini_batch_size=len(rows), ppo_micro_batch_size_per_gpu=micro_batch_size,
                             rollout_n=1, loss_agg_mode=agg, loss_scale_factor=factor)
    model = BigramPolicy()
    total_loss = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(mine), micro_batch_size):
        data, flat = engine_micro_batch(model, mine[start:start + micro_batch_size], **batch_info)
        loss, _ = ppo_loss(config, {"log_probs": flat}, data)
        loss.backward()
        total_loss += loss.detach()
    grads = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        grads[name] = grad / world_size
    dist.all_reduce(total_loss, op=dist.ReduceOp.SUM)
    return {"loss": total_loss / world_size, "grads": grads}


def main(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = {case: actor_update(rank, world_size, *case) for case in CASES}
        results.update({("uneven", *case): actor_update(rank, world_size, *case, UNEVEN_MICRO_BATCH_SIZE)
                        for case in UNEVEN_CASES})
    finally:
        dist.destroy_process_group()
    torch.save(results, out_file)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
