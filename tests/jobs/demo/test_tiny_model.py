from jobs.chat import encode_prompt, encode_response, render_prompt
from jobs.demo.arithmetic import make_problems
from jobs.hf import load_causal_lm, load_tokenizer


def test_tiny_model_loads_offline_with_its_chat_template(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) < 500_000
    messages = [{"role": "user", "content": "Hi there"}]
    assert render_prompt(tok, messages) == "<|user|>Hi there<|eos|><|assistant|>"


def test_prompt_plus_response_is_the_templated_conversation(tiny_model_dir):
    """The tokens trained on equal the chat template applied to the whole conversation."""
    tok = load_tokenizer(tiny_model_dir)
    p = make_problems(1, seed=0)[0]
    prompt = [{"role": "user", "content": p.question}]
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": p.solution}], tokenize=False)
    ids = encode_prompt(tok, prompt) + encode_response(tok, p.solution)
    assert tok.decode(ids) == full
    assert encode_response(tok, p.solution)[-1] == tok.eos_token_id


def test_digits_are_single_tokens(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    pieces = tok.convert_ids_to_tokens(tok("47 + 385", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["4", "7", "3", "8", "5"]
