"""Loading and saving Hugging Face checkpoints the way every stage needs them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template; SPIN renders every prompt with it")
    return tokenizer


def load_causal_lm(path: str, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Any:
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    disable_dropout(model)
    return model.to(device)


def disable_dropout(model: torch.nn.Module) -> None:
    """SPIN (like DPO) compares log-probs of the same text under two models; dropout would add noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def save_hf_checkpoint(
    state_dict: dict[str, torch.Tensor], source_dir: str, out_dir: str | Path, dtype: str | torch.dtype
) -> Path:
    """Write a complete Hugging Face checkpoint: `source_dir`'s config and tokenizer with new weights.

    The result loads with `from_pretrained` and in vLLM, anywhere: safetensors, tokenizer and chat template.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    out = Path(out_dir)
    config = AutoConfig.from_pretrained(source_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict({k: v.to(torch_dtype) for k, v in state_dict.items()}, assign=True, strict=True)
    model.tie_weights()
    model.save_pretrained(out)
    load_tokenizer(source_dir).save_pretrained(out)
    generation_config = Path(source_dir) / "generation_config.json"
    if generation_config.exists():
        shutil.copy(generation_config, out / "generation_config.json")
    return out
