"""The one way prompts and responses become tokens, shared by generation, scoring, training and evaluation.

The official SPIN code sampled with "### Instruction: ..." prompts but trained on the chat template
(uclaml/SPIN#33). Here every stage calls `encode_prompt`, and the generator receives token ids, never text,
so what the model was sampled on is exactly what it is trained and scored on.
"""

from __future__ import annotations

from typing import Any, Protocol

from jobs.spin.pairs import response_budget, truncate_response


class ChatTokenizer(Protocol):
    eos_token_id: int | None
    pad_token_id: int | None
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def decode(self, token_ids: Any, **kwargs: Any) -> str: ...


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


def fit_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], bool]:
    """The prompt's ids within `max_length` tokens, with the chat template whole: the oldest turns go first, then
    the start of the last message's text. Returns (ids, whether anything was cut). A prompt whose template alone
    is too long cannot be fitted (ValueError)."""
    ids = encode_prompt(tokenizer, messages)
    if len(ids) <= max_length:
        return ids, False
    kept = list(messages)
    while len(ids) > max_length and sum(m["role"] != "system" for m in kept) > 1:
        kept.pop(next(i for i, m in enumerate(kept) if m["role"] != "system"))
        ids = encode_prompt(tokenizer, kept)
    content = list(tokenizer(kept[-1]["content"], add_special_tokens=False)["input_ids"])
    keep = len(content) - (len(ids) - max_length)
    while len(ids) > max_length:
        if keep < 1:
            raise ValueError(f"the chat template alone takes more than max_prompt_length ({max_length}) tokens")
        kept[-1] = {**kept[-1], "content": str(tokenizer.decode(content[-keep:]))}
        ids = encode_prompt(tokenizer, kept)
        keep -= max(1, len(ids) - max_length)  # decoding and encoding again may not round-trip exactly
    return ids, True


def encode_example(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, str]],
    real: str,
    max_prompt_length: int,
    max_length: int,
    max_new_tokens: int | None = None,
) -> tuple[list[int], list[int], int, bool, bool]:
    """A training example as every stage sees it: (prompt ids fitted to max_prompt_length with the template whole,
    real answer ids cut to the response budget, that budget, whether the prompt was cut, whether the real answer
    was cut)."""
    prompt, prompt_cut = fit_prompt(tokenizer, messages, max_prompt_length)
    budget = response_budget(len(prompt), max_length, max_new_tokens)
    real_ids, cut = truncate_response(encode_response(tokenizer, real), budget)
    return prompt, real_ids, budget, prompt_cut, cut
