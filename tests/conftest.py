"""Shared fixtures: tiny seeded decoder models of every supported family, a tiny
byte-level tokenizer, and real text from the built-in enwiki corpus."""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 320
TINY_FAMILIES = ("llama", "qwen2", "gemma3", "mistral")


def tiny_config(family: str):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, planted_outliers: bool = False) -> torch.nn.Module:
    """A 2-block random decoder; with ``planted_outliers`` a few input channels of the
    first block's MLP input are scaled up (random weights have no natural outliers)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    if planted_outliers:
        plant_outliers(model)
    return model


PLANTED_CHANNELS = (5, 17, 40)


def plant_outliers(model: torch.nn.Module, block: int = 0, factor: float = 40.0) -> None:
    """Scale a few channels of block ``block``'s post-attention norm weight: the MLP input
    then has outlier channels ``PLANTED_CHANNELS`` on every token."""
    with torch.no_grad():
        norm = model.model.layers[block].post_attention_layernorm
        for channel in PLANTED_CHANNELS:
            norm.weight[channel] = norm.weight[channel] * factor + (factor if _norm_is_offset(model) else 0.0)


PLANTED_OUTPUT_CHANNELS = (3, 9)


def plant_output_outliers(model: torch.nn.Module, block: int = 0, factor: float = 25.0) -> None:
    """Scale a few output rows of block ``block``'s up_proj: its NPU output then has
    channels ``PLANTED_OUTPUT_CHANNELS`` far beyond the rest (as SmolLM2's massive
    gate/up channels), which the output-side shadow computes in FP."""
    with torch.no_grad():
        up = model.model.layers[block].mlp.up_proj
        for channel in PLANTED_OUTPUT_CHANNELS:
            up.weight[channel] *= factor


def _norm_is_offset(model) -> bool:
    # Gemma's RMSNorm multiplies by (1 + weight): its weight starts at zero.
    return model.config.model_type.startswith("gemma")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on real enwiki text (deterministic)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from quantkit.data.corpus import load_documents

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(load_documents("enwiki", "calibration")[:5], vocab_size=TINY_VOCAB - 1, min_frequency=2, special_tokens=["<eos>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, eos_token="<eos>")


@pytest.fixture(scope="session")
def enwiki_calibration_text():
    from quantkit.data.corpus import load_documents

    return load_documents("enwiki", "calibration")


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_tokenizer):
    """A saved Hugging Face folder of a tiny Llama with planted outliers."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama", planted_outliers=True).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh QUANTKIT_CACHE for tests that write converted models."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTKIT_CACHE", str(cache))
    return cache
