"""An offline tiny Llama-architecture model and its tokenizer, built in seconds with no hub access.

    spin tiny-model OUT_DIR

The tokenizer is a byte-level BPE (any text encodes) that splits digits one by one, so numbers are
spelled out the same way in every context, which a tiny model needs to learn arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|eos|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def default_corpus() -> list[str]:
    from jobs.demo.arithmetic import make_problems

    problems = make_problems(3000, seed=1234)
    text = [p.question for p in problems] + [p.solution for p in problems]
    text += [
        "Hello, how are you today? I am fine, thank you. What is your name?",
        "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
        "What is the capital of France? Paris is the capital of France.",
        "Can you help me with my computer? Please restart it and try again.",
    ]
    return text


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (transformers' PreTrainedTokenizerFast) with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_positions: int = 512,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Write a randomly initialised Llama model, its tokenizer and chat template to `out_dir`.

    head_dim = hidden_size / num_heads stays at 32, the smallest vLLM's CPU attention was measured with.
    Embeddings are tied by default, as in SmolLM2 and most small models (it matters for weight reloads).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
