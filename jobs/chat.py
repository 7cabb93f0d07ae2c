"""The one way prompts and responses become tokens, shared by generation, scoring, training and evaluation.

The official SPIN code sampled with "### Instruction: ..." prompts but trained on the chat template
(uclaml/SPIN#33). Here every stage calls `encode_prompt`, and the generator receives token ids, never text,
so what the model was sampled on is exactly what it is trained and scored on.
"""

from __future__ import annotations

from typing import Any, Protocol

from jobs.spin.pairs import response_budget, truncate_prompt, truncate_response


class ChatTokenizer(Protocol):
    eos_token_id: int | None
    pad_token_id: int | None
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def render_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt as text: the conversation so far, then the header that opens the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; SPIN needs one to render prompts consistently")
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def encode_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the rendered prompt. The template writes any BOS itself, so none is added again."""
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def encode_response(tokenizer: ChatTokenizer, text: str) -> list[int]:
    """Token ids of a complete assistant response: its text, then EOS, which ends the turn."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; responses could never end")
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def pad_id(tokenizer: ChatTokenizer) -> int:
    """Padding id for collation; padded positions are masked out, so EOS serves when no pad token exists."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return int(tokenizer.eos_token_id)


def encode_example(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, str]],
    real: str,
    max_prompt_length: int,
    max_length: int,
    max_new_tokens: int | None = None,
) -> tuple[list[int], list[int], int, bool]:
    """A training example as every stage sees it: (prompt ids cut to max_prompt_length keeping their end, real
    answer ids cut to the response budget, that budget, whether the real answer was cut)."""
    prompt = truncate_prompt(encode_prompt(tokenizer, messages), max_prompt_length)
    budget = response_budget(len(prompt), max_length, max_new_tokens)
    real_ids, cut = truncate_response(encode_response(tokenizer, real), budget)
    return prompt, real_ids, budget, cut
