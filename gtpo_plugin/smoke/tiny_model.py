"""A tiny random-init Qwen2 causal LM and its tokenizer, built locally (no download) for the smoke run.

The tokenizer is a byte-level BPE trained on the smoke run's own text (arithmetic in the answer format),
with Qwen2's normalizer and pre-tokenizer, so that ``AutoTokenizer`` (which loads a folder whose model is a
Qwen2 as ``Qwen2Tokenizer``, rebuilt from the vocabulary and merges) reproduces it exactly; it is wrapped
as a ``transformers`` fast tokenizer with a ChatML chat template, as Qwen2.5's.
The format tags ``<reasoning>``, ``</reasoning>``, ``<answer>``, ``</answer>`` are single tokens, so
completions that write them share them token for token: the structure GTPO's conflict handling is about.
The model is a Qwen2 architecture (the family of the recipes' default model, which verl and vLLM both
support) with about 3.0 M parameters; the weights are random, so it writes random tokens: enough to drive
every stage of verl's trainer, not to learn anything in three steps.

``logit_scale`` gives the same random model a confident start: it multiplies the final norm's weight, so
every logit is multiplied by it and each token's entropy falls (at 1 the entropy is near ln V, far above
GTPO's filter bound ln 2; ``CONFIDENT_LOGIT_SCALE`` brings the completions' mean entropy just below ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

FORMAT_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BPE_VOCAB_LIMIT = 512  # an upper bound: the little training text yields about 300 tokens
MAX_POSITIONS = 2048
# Measured on the fixed completions of tests/verl_adapter/fsdp_actor_run.py at temperature 0.9: the mean of
# the completions' mean entropies is 0.65 nats, and 3 of the 8 completions lie above ln 2 (0.75 to 0.86).
CONFIDENT_LOGIT_SCALE = 36.0


def training_text() -> list[str]:
    """What the BPE merges are learnt from: the smoke problems, answers in the paper's format, role names."""
    from gtpo_plugin.smoke.problems import problem_text

    lines = ["system", "user", "assistant"]
    lines += [problem_text(a, b) + f" {a + b}" for a in range(0, 100, 7) for b in range(0, 100, 11)]
    lines += [f"<reasoning>\n{a} + {b} = {a + b}\n</reasoning>\n<answer>\n{a + b}\n</answer>" for a in range(20)
              for b in range(5)]
    return lines


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = BPE_VOCAB_LIMIT):
    """A ``PreTrainedTokenizerFast``: byte-level BPE, ChatML template, ``<|im_end|>`` as end of sequence.

    Every byte is in the alphabet, so any text encodes; specials and format tags are added tokens.
    Deterministic for the same texts (BPE training on a few kB: milliseconds).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(texts if texts is not None else training_text()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=END_OF_TEXT,
                                        bos_token=None, unk_token=None, model_max_length=MAX_POSITIONS)
    tokenizer.add_tokens(list(FORMAT_TAGS), special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0, logit_scale: float = 1.0):
    """A random-init ``Qwen2ForCausalLM`` (bfloat16 on disk) for ``tokenizer``; embeddings tied to the head.

    The vocabulary is rounded up to a multiple of 64, as hub checkpoints pad theirs. ``logit_scale`` > 0
    multiplies the final norm's weight (so every logit), sharpening the output distributions.
    """
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64 * math.ceil(len(tokenizer) / 64),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Qwen2's shapes scaled down: 4 layers, hidden 256, 4 query heads of 64 sharing 2 key/value heads.
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.mul_(logit_scale)
    return model.bfloat16()


def save_tiny_model(folder: str | Path, seed: int = 0, logit_scale: float = 1.0) -> Path:
    """Build the tokenizer and the model and save both into ``folder`` (a ``from_pretrained`` folder)."""
    from transformers import GenerationConfig

    folder = Path(folder)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, logit_scale=logit_scale)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
