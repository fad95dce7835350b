"""verl's own ``main_ppo`` on the smoke recipe's resolved config, without a GPU: the smoke run on CPU.

Run by ``test_verl_fit_vllm_cpu.py`` in a fresh process, once per smoke-recipe run::

    python fsdp_fit_run.py SMOKE_DIR/configs/gtpo_first.yaml [HYDRA_OVERRIDES]   # CPU, verl's vLLM rollout
    python fsdp_fit_run.py --device cuda SMOKE_DIR/configs/gtpo_first.yaml       # scripts/gpu_check.sh, on a GPU

The config is one that ``DRY_RUN=1 bash recipes/run_smoke_1gpu.sh`` printed (model, parquet data, rewards,
checkpoint and resume settings, the metrics file). This process is ``python -m verl.trainer.main_ppo
--config-path SMOKE_DIR/configs --config-name gtpo_first OVERRIDES``, with the environment and the Hydra
overrides below, then the caller's, nothing else: verl's ``main`` validates the config and calls ``run_ppo``
(``ray.init``, its ``TaskRunnerV1`` actor: TransferQueue, the trainer's ``init()`` with its resource pools, Ray
worker groups, reward loop, LLM server replicas and checkpoint engine, the agent-loop manager, ``fit()``, the
file logger). What stands in, each loaded in every Ray process by verl's ``VERL_USE_EXTERNAL_MODULES``:
- the GPU: ``cpu_platform`` (``VERL_PLATFORM=cpu``: device ``cpu``, gloo, Ray's logical GPU as the worker's
  slot, verl's FSDP engine registered for ``cpu``; on verl 0.9.0 flash-attn's un-padding in torch,
  ``torch_unpadding``);
- with ``--rollout vllm`` (the default on CPU): verl's own vLLM rollout on vLLM's CPU build, ``vllm-cpu``, with
  ``vllm_cpu`` standing in for what its CUDA build gives (the distribution name ``vllm``, linear layers that
  keep their weights); vLLM's sleep mode, which its CPU build refuses, is off; its KV cache is 1 GiB
  (``VLLM_CPU_KVCACHE_SPACE``), its prefill chunks 512 tokens (a shorter warm-up) and verl's weight-sync buckets
  64 MB (through ``/dev/shm``: the CPU platform has no CUDA IPC);
- with ``--rollout hf`` (the default on CUDA, where the GPU bundle has no vLLM): ``hf_rollout``, the rollout
  ``hf``, a ``transformers`` server per replica, fed the actor's weights by verl's naive checkpoint engine.
The settings a CPU cannot take are overridden: FSDP2 (FSDP1's ``sync_module_states`` needs a GPU) and ``sdpa``
attention instead of flash-attn's; Ray gets 16 logical CPUs (TransferQueue's storage units, the agent-loop
and reward workers each reserve one), one logical GPU (no device behind it: verl's resource pools count and
reserve GPUs) and no dashboard; Hydra writes its run folder next to the metrics. The recipes' packed layout
(``use_remove_padding=true``) stays. With ``--device cuda`` the platform is verl's own CUDA one and only
``sdpa``, the ``hf`` rollout and Ray's dashboard are changed: FSDP as the recipe sets it, bf16, the packed
layout; the rollout server generates on the GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDPA = "++actor_rollout_ref.model.override_config.attn_implementation=sdpa"
COMMON = ("++ray_kwargs.ray_init.include_dashboard=false", SDPA)
OVERRIDES = {
    "cpu": (*COMMON, "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2",
            "trainer.device=cpu", "ray_kwargs.ray_init.num_cpus=16", "++ray_kwargs.ray_init.num_gpus=1"),
    "cuda": COMMON,
}
ROLLOUTS = {
    "hf": ("actor_rollout_ref.rollout.name=hf",),
    "vllm": ("actor_rollout_ref.rollout.name=vllm", "++actor_rollout_ref.rollout.enable_sleep_mode=false",
             "actor_rollout_ref.rollout.max_num_batched_tokens=512",
             "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=64"),
}
PLATFORM_STAND_INS = {"cpu": ("cpu_platform",), "cuda": ()}
ROLLOUT_STAND_INS = {("cpu", "vllm"): ("vllm_cpu",), ("cpu", "hf"): ("hf_rollout",), ("cuda", "hf"): ("hf_rollout",),
                     ("cuda", "vllm"): ()}
VLLM_CPU_KVCACHE_GIB = "1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a config that DRY_RUN=1 bash recipes/run_smoke_1gpu.sh printed")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, applied last")
    parser.add_argument("--device", choices=sorted(OVERRIDES), default="cpu")
    parser.add_argument("--rollout", choices=sorted(ROLLOUTS), help="vllm on cpu, hf on cuda unless given")
    parser.add_argument("--probe", type=Path, help="save what GTPO read, batch by batch, here (gtpo_probe.py)")
    args = parser.parse_intermixed_args(argv)
    args.rollout = args.rollout or ("vllm" if args.device == "cpu" else "hf")
    return args


def main_ppo_argv(config: Path, device: str, rollout: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """``main_ppo``'s command line: the printed config as Hydra's primary config, and the overrides."""
    return ["--config-path", str(config.resolve().parent), "--config-name", config.stem, *OVERRIDES[device],
            *ROLLOUTS[rollout], f"hydra.run.dir={run_dir}", *overrides]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from omegaconf import OmegaConf

    metrics = Path(OmegaConf.load(args.config).ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH)
    metrics.parent.mkdir(parents=True, exist_ok=True)  # as the recipe does: verl's file logger does not
    stand_ins = (*PLATFORM_STAND_INS[args.device], *ROLLOUT_STAND_INS[args.device, args.rollout])
    if args.probe:
        stand_ins += ("gtpo_probe",)
        os.environ["GTPO_PROBE_DIR"] = str(args.probe.resolve())
    os.environ["VERL_USE_EXTERNAL_MODULES"] = ",".join(stand_ins)
    if "vllm_cpu" in stand_ins:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = VLLM_CPU_KVCACHE_GIB
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.device == "cpu":
        os.environ["VERL_PLATFORM"] = "cpu"
    else:
        os.environ.pop("VERL_PLATFORM", None)
    sys.path.insert(0, str(HERE))
    sys.argv = ["verl.trainer.main_ppo",
                *main_ppo_argv(args.config, args.device, args.rollout, metrics.parent, args.overrides)]
    from verl.trainer import main_ppo  # verl reads VERL_USE_EXTERNAL_MODULES and VERL_PLATFORM from here on

    main_ppo.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
