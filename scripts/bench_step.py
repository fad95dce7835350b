"""Time verl's v1 advantage stage with GTPO against GRPO, side by side in one run, and the two policy losses.

Usage:
    python scripts/bench_step.py --quick                        # CI's smoke subset: prints the ratio line
    python scripts/bench_step.py --out docs/bench/step.json     # the full grid (see docs/performance.md)
    python scripts/bench_step.py --sizes 1024x4096 --rounds 7 --rollout with

What runs: verl's own ``PPOTrainerSync._compute_advantage`` (built from verl's Hydra config with the
README's settings, group size 16, KL off in the reward and in the loss), with the plugin's hooks as
``import verl`` installs them, over a real TransferQueue started as verl's ``main_ppo`` starts it:
``tq.init(config.transfer_queue)`` with verl's own ``transfer_queue`` section (SimpleStorage, 8 storage
units) on a local Ray. The batch is put into TransferQueue as verl's agent loop and old-log-prob pass
leave it: keys ``{uid}_{session}_0``, jagged ``responses`` (int64), ``response_mask`` (int64),
``rm_scores`` (the score on the last token), ``old_log_probs`` and ``entropy`` (float32), and, in the
"with rollout correction" variant, ``rollout_log_probs``, whose presence makes verl run its rollout
correction (with verl's default ``algorithm.rollout_correction`` settings). Lengths are mixed: 20 % of
the completions are truncated at L, the others uniform in [L/8, L); every group shares an opening and
a closing, so conflict tokens exist.

How it is measured: per size, one warm-up stage of each algorithm, then ``--rounds`` rounds in ABBA
order (GTPO, GRPO, GRPO, GTPO, ...); each figure is the median over the rounds. Before each stage the
driver runs ``gc.collect()`` and glibc's ``malloc_trim(0)``, so that every stage starts from the same
allocator state. Peak RSS growth is exact, not sampled: writing "5" to ``/proc/self/clear_refs``
resets the kernel's high-water mark (VmHWM) to the current RSS, and the growth is VmHWM after the
stage minus VmRSS before it. Phases are the exclusive wall time spent in verl's calls inside the stage:
fetch (``tq.kv_batch_get``), pad (``TensorDict.to_padded_tensor``), rollout correction
(``compute_rollout_correction_and_add_to_batch``), compute (``compute_advantage_for_multi_trajectories``,
the estimator included), write (``response_to_nested`` and ``tq.kv_batch_put``), other (the rest).
Bytes fetched and written are the tensor bytes TransferQueue's client returns to the stage's fetches (what the
plugin takes out of verl's fetch included) and its ``kv_batch_put`` call sends (the ``uid`` strings not counted).

The policy losses ``gtpo`` and verl's ``vanilla`` are timed through verl's registry
(``get_policy_loss_fn``), forward and backward, at micro-batch sizes ``--loss-sizes``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import torch

GROUP_SIZE = 16
VOCAB = 151_936
ALGORITHMS = ("gtpo", "grpo")
FULL_SIZES = [(b, length) for b in (256, 1024, 4096) for length in (1024, 4096, 16384)]
QUICK_SIZES = [(64, 256), (256, 1024)]  # a smoke subset: the code end to end, not a figure to quote
QUICK_ROUNDS = 1
PHASES = ("fetch", "pad", "rollout_correction", "compute", "write", "other")
BYTES_PER_SLOT = 110  # the driver's peak bytes per B x L slot, with room: at most 86 measured (docs/performance.md)


# ----------------------------------------------------------------------------------------------- the batch


@dataclass
class Batch:
    """One synthetic batch as TransferQueue holds it after verl's old-log-prob pass."""

    meta: Any  # the KVBatchMeta verl's stages hand each other: keys, tags, partition and the fields stored
    tokens: int  # real (unpadded) tokens


def lengths_of(batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Response lengths: 20 % truncated at ``length``, the rest uniform in [length/8, length)."""
    lengths = torch.randint(max(length // 8, 16), length, (batch_size,), generator=generator)
    truncated = torch.rand(batch_size, generator=generator) < 0.2
    return torch.where(truncated, length, lengths)


def jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def make_fields(lengths: torch.Tensor, first_row: int, length: int, seed: int, rollout: bool) -> dict[str, Any]:
    """The stage's fields, jagged, for the rows ``first_row, ...`` of ``lengths``; O(rows·L) time and memory."""
    from tensordict.tensorclass import NonTensorStack

    generator = torch.Generator().manual_seed(seed * 1_000_003 + first_row)
    count = len(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    total = int(offsets[-1])
    groups = torch.arange(first_row, first_row + count) // GROUP_SIZE
    shared = torch.Generator()
    opening, closing = torch.empty(count, 8, dtype=torch.int64), torch.empty(count, 6, dtype=torch.int64)
    for row, group in enumerate(groups.tolist()):  # every completion of a group opens and closes alike
        shared.manual_seed(seed * 1_000_003 + group)
        opening[row], closing[row] = torch.randint(0, VOCAB, (8,), generator=shared), torch.randint(
            0, VOCAB, (6,), generator=shared)
    responses = torch.randint(0, VOCAB, (total,), generator=generator)
    for k in range(8):
        responses[offsets[:-1] + k] = opening[:, k]
    finished = lengths < length
    for k in range(6):
        responses[(offsets[1:] - 6 + k)[finished]] = closing[finished, k]
    scores = torch.zeros(total)
    scores[offsets[1:] - 1] = (torch.rand(count, generator=generator) < 0.5).float() * finished.float()
    old_log_probs = -2 * torch.rand(total, generator=generator)
    fields: dict[str, Any] = {
        "uid": NonTensorStack(*[f"uid{group}" for group in groups.tolist()]),
        "prompts": jagged(torch.randint(0, VOCAB, (count * 64,), generator=generator), torch.arange(count + 1) * 64),
        "responses": jagged(responses, offsets),
        "response_mask": jagged(torch.ones(total, dtype=torch.int64), offsets),
        "rm_scores": jagged(scores, offsets),
        "old_log_probs": jagged(old_log_probs, offsets),
        "entropy": jagged(1.2 * torch.rand(total, generator=generator), offsets),
    }
    if rollout:
        fields["rollout_log_probs"] = jagged(old_log_probs + 0.05 * torch.randn(total, generator=generator), offsets)
    return fields


def put_batch(batch_size: int, length: int, seed: int, rollout: bool, chunk: int = 256) -> Batch:
    """Put a batch into TransferQueue ``chunk`` rows at a time (as agent-loop workers put a few at a time)."""
    import transfer_queue as tq
    from tensordict import TensorDict

    lengths = lengths_of(batch_size, length, torch.Generator().manual_seed(seed))
    keys = [f"uid{row // GROUP_SIZE}_{row % GROUP_SIZE}_0" for row in range(batch_size)]
    tags = [{"status": "success", "prompt_len": 64, "response_len": int(n), "seq_len": 64 + int(n)} for n in lengths]
    partition = f"bench{'-rc' if rollout else ''}-{batch_size}x{length}"
    for start in range(0, batch_size, chunk):
        rows = slice(start, min(start + chunk, batch_size))
        fields = make_fields(lengths[rows], start, length, seed, rollout)
        tq.kv_batch_put(keys=keys[rows], partition_id=partition, fields=TensorDict(fields, batch_size=len(keys[rows])),
                        tags=tags[rows])
    meta = tq.kv_batch_put(keys=keys, partition_id=partition, tags=tags)  # as verl's old-log-prob pass returns it
    return Batch(meta, int(lengths.sum()))


# ------------------------------------------------------------------------------------------ instrumentation


@dataclass
class Record:
    """What one stage cost; ``peaks``: the RSS high-water mark above the stage's start, per phase."""

    seconds: float = 0.0
    rss_growth: int = 0
    fetched: int = 0
    written: int = 0
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    peaks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    start_rss: int = 0


class Probe:
    """Exclusive wall time and RSS peak per phase, and the bytes moved, of the stage that runs (``current``).

    At every entry into and exit from a timed call the RSS high-water mark is read, charged to the phase that
    was running (the innermost open call, else "other") and reset: each phase's peak is exact.
    """

    def __init__(self) -> None:
        self.current: Record | None = None
        self._stack: list[tuple[str, list[float]]] = []  # per open call: phase, [start, time in nested calls]

    def _charge_peak(self) -> None:
        """Charge the high-water mark since the last reset to the running phase, then reset it."""
        assert self.current is not None
        phase = self._stack[-1][0] if self._stack else "other"
        peak = rss_bytes("VmHWM") - self.current.start_rss
        self.current.peaks[phase] = max(self.current.peaks[phase], peak)
        reset_peak_rss()

    def timed(self, phase: str, function: Callable[..., Any], count: str | None = None) -> Callable[..., Any]:
        """``function`` that adds its exclusive time and peak to ``phase`` (and, with ``count``, bytes moved)."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            if self.current is None:
                return function(*args, **kwargs)
            self._charge_peak()
            self._stack.append((phase, [time.perf_counter(), 0.0]))
            try:
                result = function(*args, **kwargs)
            finally:
                self._charge_peak()
                _, (start, nested) = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.current.phases[phase] += elapsed - nested
                if self._stack:
                    self._stack[-1][1][1] += elapsed
            if count == "written":
                self.current.written += tensor_bytes(kwargs.get("fields"))
            return result

        return timed_call

    def counted_get(self, get_data: Callable[..., Any]) -> Callable[..., Any]:
        """TransferQueue's client ``async_get_data``, adding the bytes it returns to the running stage."""

        async def async_get_data(*args: Any, **kwargs: Any) -> Any:
            result = await get_data(*args, **kwargs)
            if self.current is not None:
                self.current.fetched += tensor_bytes(result)
            return result

        return async_get_data

    def finish(self) -> None:
        """Close the running stage: charge the last segment, and set its peak growth and "other" time."""
        assert self.current is not None
        self._charge_peak()
        record, self.current = self.current, None
        record.rss_growth = max(record.peaks.values())
        record.phases["other"] = record.seconds - sum(record.phases.values())


def tensor_bytes(data: Any) -> int:
    """Bytes of the tensors in a TensorDict (a jagged one: its values and offsets); 0 for None."""
    if data is None:
        return 0
    total = 0
    for value in data.values():
        if isinstance(value, torch.Tensor):
            parts = (value.values(), value.offsets()) if value.is_nested else (value,)
            total += sum(part.numel() * part.element_size() for part in parts)
    return total


def instrument(probe: Probe) -> None:
    """Time verl's calls inside the advantage stage (wrapping the names ``trainer_base`` looks up)."""
    import transfer_queue as tq
    from tensordict import TensorDict
    from transfer_queue.client import TransferQueueClient
    from verl.trainer.ppo.v1 import trainer_base

    tq.kv_batch_get = probe.timed("fetch", tq.kv_batch_get)
    # Bytes where every fetch lands (what the plugin takes out of verl's fetch included):
    TransferQueueClient.async_get_data = probe.counted_get(TransferQueueClient.async_get_data)
    tq.kv_batch_put = probe.timed("write", tq.kv_batch_put, "written")
    TensorDict.to_padded_tensor = probe.timed("pad", TensorDict.to_padded_tensor)
    trainer_base.response_to_nested = probe.timed("write", trainer_base.response_to_nested)
    trainer_base.compute_rollout_correction_and_add_to_batch = probe.timed(
        "rollout_correction", trainer_base.compute_rollout_correction_and_add_to_batch)
    trainer_base.compute_advantage_for_multi_trajectories = probe.timed(
        "compute", trainer_base.compute_advantage_for_multi_trajectories)


def rss_bytes(field_name: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> int:
    """Reset the kernel's RSS high-water mark to the current RSS (clear_refs 5); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return rss_bytes("VmRSS")


def settle() -> None:
    """Free what the last stage left (Python and glibc), so every stage starts from the same state."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: Python's collection alone
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_stage(trainer: Any, batch: Batch, probe: Probe) -> Record:
    """One call of verl's ``_compute_advantage`` on ``batch``, with its time, peak RSS growth, phases, bytes."""
    meta = copy.deepcopy(batch.meta)  # verl's stage adds to the metadata it is given
    settle()
    record = Record(start_rss=reset_peak_rss())
    probe.current = record
    start = time.perf_counter()
    try:
        trainer._compute_advantage(meta, {})
    finally:
        record.seconds = time.perf_counter() - start
        probe.finish()
    return record


# ----------------------------------------------------------------------------------------------- the setup


def verl_config(algorithm: str) -> Any:
    """verl's Hydra config (ppo_trainer.yaml) with the README's settings for ``algorithm``, KL off."""
    import verl
    from hydra import compose, initialize_config_dir

    loss = "gtpo" if algorithm == "gtpo" else "vanilla"
    overrides = [f"algorithm.adv_estimator={algorithm}", f"actor_rollout_ref.actor.policy_loss.loss_mode={loss}",
                 "actor_rollout_ref.actor.use_kl_loss=false", "algorithm.use_kl_in_reward=false",
                 "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
                 f"actor_rollout_ref.rollout.n={GROUP_SIZE}", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                 "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2"]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def start_transfer_queue() -> dict:
    """Ray and TransferQueue as verl's main_ppo starts them: ``tq.init(config.transfer_queue)``."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    config = verl_config("grpo")
    config.transfer_queue.enable = True
    OmegaConf.resolve(config)
    units = config.transfer_queue.backend.SimpleStorage.num_data_storage_units
    # Each storage unit is an actor asking Ray for one CPU: give Ray as many logical CPUs as a cluster would.
    ray.init(num_cpus=max(16, units + 2), include_dashboard=False, log_to_driver=False)
    tq.init(config.transfer_queue)
    return OmegaConf.to_container(config.transfer_queue.backend.SimpleStorage)


def trainers() -> dict[str, Any]:
    from verl.trainer.ppo.v1 import PPOTrainerSync

    return {algorithm: PPOTrainerSync(verl_config(algorithm)) for algorithm in ALGORITHMS}


# ---------------------------------------------------------------------------------------------- measuring


def median_record(records: list[Record]) -> dict:
    """The median of each figure over the rounds (bytes are the same every round)."""
    return {
        "seconds": statistics.median(r.seconds for r in records),
        "rss_growth_mib": statistics.median(r.rss_growth for r in records) / 2**20,
        "fetched_mib": records[0].fetched / 2**20,
        "written_mib": records[0].written / 2**20,
        "phases_s": {phase: statistics.median(r.phases[phase] for r in records) for phase in PHASES},
        "peak_rss_growth_mib_by_phase": {phase: statistics.median(r.peaks[phase] for r in records) / 2**20
                                         for phase in PHASES},
    }


def measure_size(batch_size: int, length: int, rollout: bool, rounds: int, seed: int, stages: dict,
                 probe: Probe) -> dict:
    """GTPO and GRPO on one batch: a warm-up each, then ``rounds`` rounds in ABBA order."""
    import transfer_queue as tq

    batch = put_batch(batch_size, length, seed, rollout)
    records: dict[str, list[Record]] = {algorithm: [] for algorithm in ALGORITHMS}
    for algorithm in ALGORITHMS:
        run_stage(stages[algorithm], batch, probe)
    for round_ in range(rounds):
        order = ALGORITHMS if round_ % 2 == 0 else ALGORITHMS[::-1]
        for algorithm in order:
            records[algorithm].append(run_stage(stages[algorithm], batch, probe))
    tq.kv_clear(keys=batch.meta.keys, partition_id=batch.meta.partition_id)
    ratios = [a.seconds / b.seconds for a, b in zip(records["gtpo"], records["grpo"], strict=True)]
    gtpo, grpo = median_record(records["gtpo"]), median_record(records["grpo"])
    return {
        "batch": batch_size, "length": length, "tokens": batch_size * length, "real_tokens": batch.tokens,
        "rollout_correction": rollout, "rounds": rounds,
        "grpo_s": grpo["seconds"], "gtpo_s": gtpo["seconds"], "ratio": gtpo["seconds"] / grpo["seconds"],
        "ratio_per_round": ratios, "grpo": grpo, "gtpo": gtpo,
    }


def loss_timings(sizes: list[tuple[int, int]], rounds: int, seed: int) -> list[dict]:
    """``gtpo`` against ``vanilla`` through verl's registry, forward and backward, per micro-batch size."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    results = []
    for batch_size, length in sizes:
        generator = torch.Generator().manual_seed(seed)
        old = -2 * torch.rand(batch_size, length, generator=generator)
        new = (old + 0.1 * torch.randn(batch_size, length, generator=generator)).requires_grad_()
        advantages = torch.randn(batch_size, length, generator=generator)
        lengths = lengths_of(batch_size, length, generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
        times: dict[str, list[float]] = {"gtpo": [], "vanilla": []}
        for round_ in range(rounds + 1):
            order = ("gtpo", "vanilla") if round_ % 2 == 0 else ("vanilla", "gtpo")
            for name in order:
                config = FSDPActorConfig(strategy="fsdp", policy_loss=PolicyLossConfig(loss_mode=name),
                                         ppo_mini_batch_size=batch_size, ppo_micro_batch_size_per_gpu=batch_size,
                                         rollout_n=1, loss_agg_mode="seq-mean-token-mean")
                start = time.perf_counter()
                loss, _ = get_policy_loss_fn(name)(old, new, advantages, mask, "seq-mean-token-mean", config)
                loss.backward()
                if round_:  # round 0 is the warm-up
                    times[name].append(time.perf_counter() - start)
                new.grad = None
        gtpo, vanilla = statistics.median(times["gtpo"]), statistics.median(times["vanilla"])
        results.append({"batch": batch_size, "length": length, "vanilla_s": vanilla, "gtpo_s": gtpo,
                        "ratio": gtpo / vanilla})
    return results


# ------------------------------------------------------------------------------------------------ the run


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown"
    import ray
    import transfer_queue
    import verl

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "verl": verl.__version__,
            "transfer_queue": getattr(transfer_queue, "__version__", "unknown"), "ray": ray.__version__}


def growth_exponents(entries: list[dict]) -> dict[str, float]:
    """Per algorithm and rollout variant, the least-squares slope of log(seconds) on log(B x L)."""
    import numpy as np

    exponents = {}
    for rollout in (False, True):
        rows = [entry for entry in entries if entry["rollout_correction"] == rollout]
        if len({entry["tokens"] for entry in rows}) < 2:
            continue
        tokens = np.log([entry["tokens"] for entry in rows])
        for algorithm in ALGORITHMS:
            seconds = np.log([entry[f"{algorithm}_s"] for entry in rows])
            exponents[f"{algorithm}, {'with' if rollout else 'without'} rollout correction"] = float(
                np.polyfit(tokens, seconds, 1)[0])
    return exponents


def plot(results: dict, path: str) -> None:
    """Seconds against B x L tokens, log-log, both algorithms, with and without rollout correction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for rollout, fill in ((False, "full"), (True, "none")):  # points only: sizes of equal B x L differ in B
        rows = [e for e in results["sizes"] if e["rollout_correction"] == rollout]
        for algorithm, marker in (("grpo", "s"), ("gtpo", "o")):
            if rows:
                axes.plot([e["tokens"] for e in rows], [e[f"{algorithm}_s"] for e in rows], linestyle="none",
                          marker=marker, fillstyle=fill, markersize=7,
                          label=f"{algorithm.upper()}, {'with' if rollout else 'without'} rollout correction")
    axes.set(xscale="log", yscale="log", xlabel="B x L (token slots)", ylabel="advantage stage, s (median)",
             title=f"verl v1 advantage stage on {results['machine']['cores']} CPU cores")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_size(text: str) -> tuple[int, int]:
    """``"BxL"`` as ``(B, L)``."""
    try:
        batch_size, length = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not BxL (e.g. 1024x4096)") from error
    return batch_size, length


def print_row(entry: dict) -> None:
    grpo, gtpo = entry["grpo"], entry["gtpo"]
    phases = " ".join(f"{phase}={gtpo['phases_s'][phase]:.2f}/{grpo['phases_s'][phase]:.2f}s,"
                      f"{gtpo['peak_rss_growth_mib_by_phase'][phase]:.0f}/{grpo['peak_rss_growth_mib_by_phase'][phase]:.0f}M"
                      for phase in PHASES)
    print(f"{entry['batch']:5d} x {entry['length']:5d} rc={'yes' if entry['rollout_correction'] else 'no ':3s} "
          f"GRPO {entry['grpo_s']:7.3f} s  GTPO {entry['gtpo_s']:7.3f} s  ratio {entry['ratio']:.3f}  "
          f"RSS+ MiB {grpo['rss_growth_mib']:7.1f} / {gtpo['rss_growth_mib']:7.1f}  "
          f"fetched MiB {grpo['fetched_mib']:.0f} / {gtpo['fetched_mib']:.0f}  "
          f"[GTPO/GRPO s: {phases}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"CI's smoke subset: sizes {QUICK_SIZES}, {QUICK_ROUNDS} round, no rollout correction")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="BxL sizes (default: the full 3 x 3 grid)")
    parser.add_argument("--rollout", choices=("without", "with", "both"), default="both",
                        help="with rollout_log_probs (verl's rollout correction runs), without, or both (default)")
    parser.add_argument("--rounds", type=int, default=5, help="ABBA rounds per size after the warm-up (default 5)")
    parser.add_argument("--loss-sizes", type=parse_size, nargs="*", default=[(8, 8192), (4, 16384), (16, 4096)],
                        help="micro-batch sizes BxL of the policy-loss timing (default 8x8192 4x16384 16x4096)")
    parser.add_argument("--max-gib", type=float, default=8.0,
                        help=f"skip sizes whose driver peak, estimated at {BYTES_PER_SLOT} bytes per slot, "
                             "exceeds this (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--plot", help="draw seconds against tokens, log-log, as this PNG")
    parser.add_argument("--from-json", help="measure nothing: print and plot the results in this JSON file")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as saved:
            report(json.load(saved), args)
        return
    sizes = QUICK_SIZES if args.quick else (args.sizes or FULL_SIZES)
    if any(batch_size % GROUP_SIZE for batch_size, _ in sizes):
        parser.error(f"every B of --sizes must be a multiple of the group size {GROUP_SIZE}")
    variants = [False] if args.quick else {"without": [False], "with": [True], "both": [False, True]}[args.rollout]
    loss_sizes = [(8, 1024)] if args.quick else args.loss_sizes
    rounds = QUICK_ROUNDS if args.quick else args.rounds

    import verl  # noqa: F401  (loads the plugin, which hooks verl's trainer as it is imported)

    storage = start_transfer_queue()
    probe = Probe()
    instrument(probe)
    stages = trainers()
    gc.freeze()  # what exists now lives to the end: the collections before each stage need not scan it
    results: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "load_before": os.getloadavg(), "transfer_queue": storage, "group_size": GROUP_SIZE,
        "sizes": [], "skipped": [],
    }
    for batch_size, length in sorted(sizes, key=lambda size: size[0] * size[1]):
        for rollout in variants:
            estimate = BYTES_PER_SLOT * batch_size * length / 2**30
            if estimate > args.max_gib:
                results["skipped"].append({"batch": batch_size, "length": length, "rollout_correction": rollout,
                                           "why": f"estimated driver peak {estimate:.1f} GiB > --max-gib"})
                print(f"{batch_size} x {length}: skipped, estimated driver peak {estimate:.1f} GiB", flush=True)
                continue
            entry = measure_size(batch_size, length, rollout, rounds, args.seed, stages, probe)
            results["sizes"].append(entry)
            print_row(entry)
            save(results, args.out)  # after every size: a long run that is stopped keeps what it measured
    results["policy_loss"] = loss_timings(loss_sizes, rounds, args.seed)
    results["growth_exponents"] = growth_exponents(results["sizes"])
    results["load_after"] = os.getloadavg()
    save(results, args.out)
    report(results, args)


def save(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(results, out, indent=1)
            out.write("\n")


def report(results: dict, args: argparse.Namespace) -> None:
    """Print the policy-loss timings, the growth exponents and the ratio line; draw the plot if asked."""
    for row in results.get("policy_loss", []):
        print(f"policy loss {row['batch']} x {row['length']}: vanilla {row['vanilla_s'] * 1e3:.1f} ms, "
              f"gtpo {row['gtpo_s'] * 1e3:.1f} ms, ratio {row['ratio']:.2f}")
    for name, exponent in results.get("growth_exponents", {}).items():
        print(f"growth exponent (log-log slope of seconds on tokens), {name}: {exponent:.2f}")
    if args.plot:
        plot(results, args.plot)
    largest = max(results["sizes"], key=lambda entry: (entry["tokens"], entry["rollout_correction"]))
    print(f"advantage stage GTPO/GRPO: {largest['ratio']:.3f}")


if __name__ == "__main__":
    main()
