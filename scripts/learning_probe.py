"""Does GRPO learn on a variant of the demo's task? One warm-up, then RL runs, evaluated as the paper does.

A diagnostic for docs/ab-testing.md ("Does RL learn on the demo's task?"): it warms up the demo's model on a
variant of the task (operand range, step forms, demonstration noise, a cosine learning-rate decay, model
size), then trains each requested learning rate from those weights with the demo's own ``Trainer`` (verl's
``compute_advantage`` and policy loss, AdamW) and prints greedy accuracy, pass@1 and pass@8 on a fixed
evaluation set every ``--eval-every`` steps, with the mean |p_sampler - p_actor| check. One process, one
thread; the warm-up is kept in ``--cache``.

    python scripts/learning_probe.py --min-operands 2 --max-operands 4 --forms sum_first --noise 0.2 \\
        --cosine --lrs 1e-4,3e-5 --prompts 8 --steps 60 --eval-every 20
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import torch

logger = logging.getLogger("learning_probe")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("paper", "verl"), default="verl")
    parser.add_argument("--algorithm", default="grpo", help="an arm of gtpo_plugin.demo.arms (grpo)")
    parser.add_argument("--min-operands", type=int, default=4)
    parser.add_argument("--max-operands", type=int, default=6)
    parser.add_argument("--forms", default="sum_first,operand_first,implied", help="step forms of the warm-up")
    parser.add_argument("--noise", type=float, default=0.1, help="demonstration noise per step (0.1)")
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--cosine", action="store_true", help="decay the warm-up's learning rate to 0")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lrs", default="3e-4", help="comma-separated RL learning rates, each from the warm-up")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per RL step (8 completions each)")
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-problems", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="RL seed")
    parser.add_argument("--cache", type=Path, default=Path(".demo_cache/probe"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from gtpo_plugin.demo.cli import import_quietly

        import_quietly()
    from gtpo_plugin.demo.arms import ALGORITHMS
    from gtpo_plugin.demo.evaluate import evaluate_all, evaluation_problems
    from gtpo_plugin.demo.model import build_model
    from gtpo_plugin.demo.options import DemoOptions
    from gtpo_plugin.demo.task import build_vocab
    from gtpo_plugin.demo.train import Trainer
    from gtpo_plugin.demo.warmup import warm_up

    vocab = build_vocab()
    forms = tuple(args.forms.split(","))
    warmup = {key: getattr(args, key) for key in ("min_operands", "max_operands", "noise", "warmup_steps", "cosine",
                                                  "hidden_size", "layers")}
    path = args.cache / f"probe-{hashlib.sha256(json.dumps({**warmup, 'forms': forms}).encode()).hexdigest()[:16]}.pt"
    model = build_model(len(vocab), 0, hidden_size=args.hidden_size, layers=args.layers)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        start = time.perf_counter()
        warm_up(model, vocab, steps=args.warmup_steps, batch_size=64, noise=args.noise, lr=3e-3,
                generator=torch.Generator().manual_seed(0), min_operands=args.min_operands,
                max_operands=args.max_operands, forms=forms, cosine=args.cosine)
        logger.info("warm-up: %d steps in %.0f s", args.warmup_steps, time.perf_counter() - start)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    problems = evaluation_problems(args.eval_problems, args.min_operands, args.max_operands)
    for lr in (float(text) for text in args.lrs.split(",")):
        options = DemoOptions(preset=args.preset, steps=args.steps, prompts_per_step=args.prompts, lr=lr,
                              mini_batches=args.mini_batches, min_operands=args.min_operands,
                              max_operands=args.max_operands)
        settings = options.settings()
        trainer = Trainer(ALGORITHMS[args.algorithm], copy.deepcopy(model), vocab, settings, seed=args.seed + 1)

        def report(step: int, diff: float, trainer: Trainer = trainer, lr: float = lr,
                   temperature: float = settings.temperature, max_new_tokens: int = options.max_new_tokens) -> None:
            values = evaluate_all(trainer.model, vocab, problems, max_new_tokens=max_new_tokens,
                                  temperature=temperature)
            logger.info("lr %g step %3d: greedy %.3f  pass@1 %.3f  pass@8 %.3f  rollout_probs_diff_max %.1e", lr,
                        step, values["accuracy"], values["pass@1"], values["pass@8"], diff)

        report(0, 0.0)
        for step in range(1, args.steps + 1):
            metrics = trainer.step().metrics
            if step % args.eval_every == 0:
                report(step, metrics["demo/rollout_probs_diff_max"])


if __name__ == "__main__":
    main()
