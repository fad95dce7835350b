"""The smoke run's tiny Qwen2 model and tokenizer: saved, reloaded by ``transformers`` as verl and vLLM do, used."""

from __future__ import annotations

import json

import pytest
import torch

from gtpo_plugin.smoke.tiny_model import FORMAT_TAGS, IM_END, build_model, build_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = (
    "What is 17 plus 93?",
    "<reasoning>\n17 + 93 = 110\n</reasoning>\n<answer>\n110\n</answer>",
    "Solve the math problem. Reason step by step, ünïcode and   spaces\n\n",
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return tokenizer, model


def test_reloaded_tokenizer_encodes_as_built(loaded):
    tokenizer, _ = loaded
    built = build_tokenizer()
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == built(text)["input_ids"]
        assert tokenizer.decode(ids) == text  # byte-level: nothing lost


def test_format_tags_and_specials_are_single_tokens(loaded):
    tokenizer, _ = loaded
    for tag in FORMAT_TAGS:
        ids = tokenizer(f"x{tag}7")["input_ids"]
        assert tokenizer.convert_tokens_to_ids(tag) in ids and len(tokenizer.tokenize(tag)) == 1
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token_id != tokenizer.eos_token_id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_model_config_is_a_small_qwen2_matching_the_tokenizer(tiny_model_dir, loaded):
    tokenizer, model = loaded
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert len(tokenizer) <= config["vocab_size"] and config["vocab_size"] % 64 == 0
    assert config["eos_token_id"] == tokenizer.eos_token_id and config["pad_token_id"] == tokenizer.pad_token_id
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # a head size vLLM's kernels support
    parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < parameters < 10_000_000, parameters
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id


def test_model_generates_from_a_chat_prompt(loaded):
    tokenizer, model = loaded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    new = output[0, prompt["input_ids"].shape[1]:]
    assert 1 <= new.numel() <= 12 and int(new.max()) < model.config.vocab_size
    logits = model(**prompt).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_same_seed_same_weights_other_seed_other_weights():
    tokenizer = build_tokenizer()
    a, b, c = (build_model(tokenizer, seed=s).state_dict() for s in (0, 0, 1))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
    assert a[name].dtype == torch.bfloat16
