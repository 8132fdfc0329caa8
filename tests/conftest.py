"""Shared fixtures: tiny seeded decoder models of every supported family, a tiny
byte-level tokenizer, and real text from the built-in enwiki corpus."""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 320
TINY_FAMILIES = ("llama", "qwen2", "gemma3", "mistral")
# Every architecture the README names, each with the block features that set it apart
# (the runtime's architecture description must reproduce them all):
ARCHITECTURE_CASES = ("llama3", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
TINY_WINDOW = 24  # sliding window of the windowed cases: prompts of 3+ chunks of 16 cross it


def tiny_config(family: str):
    """A 2-block config of ``family``. Besides the plain families (TINY_FAMILIES) the
    ARCHITECTURE_CASES: llama3 (Llama-3 RoPE scaling), mistral (sliding window on every
    block), qwen2 (biases; block 1 sliding), qwen3 (q/k norms), gemma3 (1 + w norms, post
    norms, √d embeddings, GELU-tanh, local/global RoPE with linear scaling, a custom
    attention scale, final soft-cap), phi3 (fused qkv/gate_up, partial rotary, window)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

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
    tokens = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaConfig(**common, **tokens, rope_parameters=rope)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen2-windowed":
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=TINY_WINDOW, max_window_layers=1)
    if family == "qwen3":
        return Qwen3Config(**common, **tokens, head_dim=16)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "mistral-windowed":
        return MistralConfig(**common, sliding_window=TINY_WINDOW)
    if family == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    if family == "gemma3-full":
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        }
        layer_types = ["sliding_attention", "full_attention"]
        return Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=TINY_WINDOW,
            query_pre_attn_scalar=32,
            layer_types=layer_types,
            rope_parameters=rope,
            final_logit_softcapping=30.0,
        )
    if family == "phi3":
        return Phi3Config(
            **common, **tokens, sliding_window=TINY_WINDOW, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
        )
    raise ValueError(family)


def tiny_calibration_config(model, **overrides):
    """The default preset at the sizes a tiny model calibrates in seconds (4×64 calibration
    tokens, 1 AIMET sequence, 2×64 evaluation tokens, 1×32 sensitivity), with ``overrides``."""
    from quantkit.calibration import CalibrationConfig

    sizes = dict(num_sequences=4, seq_len=64, aimet_num_sequences=1, eval_num_sequences=2, eval_seq_len=64, sensitivity_num_sequences=1, sensitivity_seq_len=32)
    return CalibrationConfig.preset(model=str(model), **{**sizes, **overrides})


def tiny_model(family: str = "llama", seed: int = 0, planted_outliers: bool = False) -> torch.nn.Module:
    """A 2-block random decoder; with ``planted_outliers`` a few input channels of the
    first block's MLP input are scaled up (random weights have no natural outliers)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    if planted_outliers:
        plant_outliers(model)
    return model


# The architecture cases' configs (the plain names stay the plain families above).
_CASE_CONFIGS = {"llama3": "llama3", "mistral": "mistral-windowed", "qwen2": "qwen2-windowed", "qwen3": "qwen3", "gemma3": "gemma3-full", "phi3": "phi3"}


def architecture_case_model(case: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model of an ARCHITECTURE_CASES entry: planted input and output outliers,
    and attention sharpened so that its result depends on RoPE (random weights give nearly
    uniform attention, which would hide a wrong rotation)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(_CASE_CONFIGS[case]), dtype=torch.float32).eval()
    plant_outliers(model)
    plant_output_outliers(model)
    sharpen_attention(model)
    return model


def sharpen_attention(model: torch.nn.Module, factor: float = 4.0) -> None:
    """Scale the attention scores by factor² (q and k each by factor): through the q/k
    norms' weights where the model has them, else the q/k projection rows."""
    with torch.no_grad():
        for block in model.model.layers:
            attention = block.self_attn
            if hasattr(attention, "q_norm"):
                for norm in (attention.q_norm, attention.k_norm):
                    norm.weight.copy_((norm.weight + 1.0) * factor - 1.0 if _norm_is_offset(model) else norm.weight * factor)
            elif hasattr(attention, "qkv_proj"):
                q_and_k = model.config.num_attention_heads * attention.head_dim + model.config.num_key_value_heads * attention.head_dim
                attention.qkv_proj.weight[:q_and_k] *= factor
            else:
                attention.q_proj.weight.mul_(factor)
                attention.k_proj.weight.mul_(factor)


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
        mlp = model.model.layers[block].mlp
        up, first = (
            (mlp.gate_up_proj, mlp.gate_up_proj.out_features // 2) if hasattr(mlp, "gate_up_proj") else (mlp.up_proj, 0)
        )  # fused: gate rows, then up rows
        for channel in PLANTED_OUTPUT_CHANNELS:
            up.weight[first + channel] *= factor


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
    trainer.train_from_iterator(
        load_documents("enwiki", "calibration")[:5], vocab_size=TINY_VOCAB - 1, min_frequency=2, special_tokens=["<eos>"], show_progress=False
    )
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
