import pytest

from jobs.chat import encode_example, encode_prompt, fit_prompt
from jobs.hf import load_tokenizer


def test_a_long_prompt_is_fitted_with_the_template_whole(tiny_model_dir):
    """Oldest turns go first, then the start of the last message; the template's opening and its assistant header
    (what the model answers after) survive, where cutting the token list from the left lost them."""
    tok = load_tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "An old question " * 20},
        {"role": "assistant", "content": "An old answer."},
        {"role": "user", "content": "word " * 60 + "How many pens does Mia have now?"},
    ]
    ids, cut = fit_prompt(tok, messages, 48)
    text = tok.decode(ids)
    assert cut and len(ids) <= 48 and len(ids) >= 40
    assert text.startswith("<|system|>Be brief.<|eos|><|user|>") and text.endswith("have now?<|eos|><|assistant|>")
    assert "old" not in text
    short = [{"role": "user", "content": "Hi"}]
    assert fit_prompt(tok, short, 48) == (encode_prompt(tok, short), False)
    prompt, real, budget, prompt_cut, real_cut = encode_example(tok, messages, "The answer is 4.", 48, 96, 16)
    assert (prompt, prompt_cut, budget, real_cut) == (ids, True, 16, False)
    with pytest.raises(ValueError, match="the chat template alone takes more than max_prompt_length"):
        fit_prompt(tok, messages, 8)
