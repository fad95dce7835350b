"""Data-parallel invariance of verl's ppo_loss with the ``gtpo`` policy loss, in real processes.

The same global mini-batch of 8 sequences is trained by one process and by two processes
(torch.distributed, gloo, CPU), each run as verl's FSDP engine runs it: the global token count
all-reduced into ``batch_num_tokens``, ``dp_size`` and ``global_batch_size`` given to ``ppo_loss``,
micro-batches of 2 accumulated, gradients averaged over the ranks (see ``dp_worker.py``). The
averaged gradients of the policy's parameters must equal the one-process gradients for every
``loss_agg_mode`` of verl 0.9, for GTPO's loss and for verl's ``vanilla`` loss (the control).
(verl's Megatron engine calls the same ``ppo_loss`` with the same batch info; its pipeline schedule
and gradient reduction are not reproduced here.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")

WORKER = Path(__file__).with_name("dp_worker.py")
sys.path.insert(0, str(WORKER.parent))
import dp_worker  # noqa: E402


def launch(world_size: int, folder: Path) -> dict:
    """Run ``world_size`` worker processes in one gloo group; return rank 0's results."""
    init_file = folder / f"init_{world_size}"
    outputs = [folder / f"rank{rank}_of_{world_size}.pt" for rank in range(world_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    processes = [
        subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world_size), str(init_file), str(out)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank, out in enumerate(outputs)
    ]
    logs = [process.communicate(timeout=300)[0] for process in processes]
    for rank, process in enumerate(processes):
        assert process.returncode == 0, f"rank {rank} of {world_size} failed:\n{logs[rank][-4000:]}"
    results = [torch.load(out, weights_only=False) for out in outputs]
    for other in results[1:]:  # after the all-reduce every rank holds the same gradients
        for case in results[0]:
            for name, grad in results[0][case]["grads"].items():
                torch.testing.assert_close(other[case]["grads"][name], grad, rtol=0, atol=0)
    return results[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict]:
    folder = tmp_path_factory.mktemp("dp")
    return {world_size: launch(world_size, folder) for world_size in (1, 2)}


GLOBAL_CASES = [case for case in dp_worker.CASES if case[3] == "global"]


@pytest.mark.parametrize("case", GLOBAL_CASES, ids=["-".join(map(str, case[:3])) for case in GLOBAL_CASES])
def test_two_ranks_give_the_one_rank_gradients(runs, case):
    one, two = runs[1][case], runs[2][case]
    assert set(one["grads"]) == {"embed", "out"}
    for name, grad in one["grads"].items():
        assert grad.abs().max() > 1e-3, f"{name}: the gradient should not be trivially zero"
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("agg", ["token-mean", "token-sum"])
def test_rank_local_batch_info_would_break_the_invariance(runs, agg):
    # The control: with dp_size 1 and each rank's own token count, token-mean weighs the ranks' tokens
    # unequally (14 and 17 response tokens) and token-sum is halved by the averaging of gradients, so
    # the comparison above is able to fail.
    one = runs[1][("gtpo", agg, None, "local")]["grads"]["out"]
    two = runs[2][("gtpo", agg, None, "local")]["grads"]["out"]
    assert (two - one).abs().max() > 1e-6 * one.abs().max()


def test_gtpo_matches_vanilla_when_dual_clip_is_idle(runs):
    # log-ratios of a few tenths never reach vanilla's dual-clip ratio of 3, so both losses agree
    for agg, factor in dp_worker.AGG_MODES:
        gtpo, vanilla = runs[2][("gtpo", agg, factor, "global")], runs[2][("vanilla", agg, factor, "global")]
        torch.testing.assert_close(gtpo["grads"]["out"], vanilla["grads"]["out"], rtol=1e-12, atol=1e-14)


def test_seq_mean_token_sum_norm_needs_loss_scale_factor_to_be_invariant(runs):
    # Micro-batches that differ between one and two ranks (3 + 3 + 2 against 3 + 1 per rank): with
    # actor.loss_scale_factor set, two ranks give the one-rank gradients; unset, verl divides each
    # micro-batch by its own padded length and the gradients differ.
    scaled, unscaled = (("uneven", "gtpo", "seq-mean-token-sum-norm", factor, "global") for factor in (16.0, None))
    for name, grad in runs[1][scaled]["grads"].items():
        assert grad.abs().max() > 1e-3, f"{name}: the gradient should not be trivially zero"
        torch.testing.assert_close(runs[2][scaled]["grads"][name], grad, rtol=1e-12, atol=1e-14)
    one, two = runs[1][unscaled]["grads"]["out"], runs[2][unscaled]["grads"]["out"]
    assert (two - one).abs().max() > 1e-3 * one.abs().max()
