"""The architecture description of a loaded transformers model (the family adapter).

``describe_architecture`` reads what each decoder block computes from the model's module
structure and config — which norms exist and where, whether they are Gemma's (1 + w)
RMSNorm (found by running them on a probe, not by model name), q/k norms, the MLP
activation, the attention scale, window and soft-cap per layer, the RoPE tables the
model's rotary module holds (Llama-3 / linear / YaRN scaling already baked into their
frequencies), embedding scaling, tied LM head — and writes the runtime's contract
(``quantkit.runtime.architecture``). Then it runs the runtime's interpretation of that
description in FP against the model's own forward on a probe prompt: a block feature the
description lacks shows up as a mismatch, at ``calibrate``, with its name when known.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quantkit.errors import UnsupportedArchitectureError
from quantkit.models.architecture import DecoderLayout
from quantkit.runtime.architecture import ArchitectureDescription, LayerAttention, Norm, RopeTable
from quantkit.runtime.cpu_ops import activation, rms_norm

__all__ = ["describe_architecture", "check_description"]

log = logging.getLogger(__name__)

# Children a block, its attention and its MLP may have; anything else is a step the
# runtime does not know, and the model is refused naming it.
_BLOCK_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
_KNOWN_CHILDREN = {
    "block": {"self_attn", "mlp", *_BLOCK_NORMS},
    "self_attn": {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_norm", "k_norm"},
    "mlp": {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "act_fn", "activation_fn"},
}
# RoPE types whose frequencies depend on the current sequence length: a static-shape
# bundle needs one fixed table. (LongRoPE is static up to original_max_position_embeddings.)
_DYNAMIC_ROPE_TYPES = ("dynamic",)
_PROBE_TOKENS = 12
_PROBE_CHUNK = 5  # the probe runs as chunks, so the KV-cache path is checked too


def _unsupported(model: nn.Module, feature: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{type(model).__name__}: {feature}. quantkit's runtime executes blocks of the shapes its architecture "
        "description covers (RMSNorm w or 1 + w, optional post-attention / post-FFN norms and q/k norms, RoPE with "
        "static scaling and partial rotary, full or sliding-window attention, SiLU or GELU-tanh gated MLPs, fused or "
        "separate projections); this model needs support for that feature first."
    )


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _check_children(model: nn.Module, module: nn.Module, role: str, where: str) -> None:
    for name, child in module.named_children():
        if name in _KNOWN_CHILDREN[role] or isinstance(child, nn.Dropout):  # dropout is the identity at inference
            continue
        raise _unsupported(model, f"{where}.{name} ({type(child).__name__}) is a block step quantkit does not know")


def _norm(model: nn.Module, module: nn.Module, name: str) -> Norm:
    """Classify an RMSNorm by running it: w·x/rms or (1 + w)·x/rms (Gemma)."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not isinstance(eps, float):
        raise _unsupported(model, f"{name} ({type(module).__name__}) is not an RMSNorm with a weight vector and an eps")
    probe = torch.randn(3, weight.numel(), generator=torch.Generator().manual_seed(0)).to(weight.device)
    with torch.no_grad():
        got = module(probe).float()
        for offset in (0.0, 1.0):
            if torch.allclose(got, rms_norm(probe, weight.float(), eps, offset), rtol=1e-5, atol=1e-5):
                return Norm(name, float(eps), offset)
    raise _unsupported(model, f"{name} ({type(module).__name__}) computes neither w·x/rms nor (1 + w)·x/rms (a LayerNorm or another norm)")


def _activation(model: nn.Module, mlp: nn.Module) -> str:
    function = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    if function is None:
        raise _unsupported(model, "the MLP has no act_fn / activation_fn")
    probe = torch.linspace(-6, 6, 97)
    with torch.no_grad():
        got = function(probe)
        for name in ("silu", "gelu_tanh"):
            if torch.allclose(got, activation(name, probe), rtol=1e-5, atol=1e-6):
                return name
    raise _unsupported(model, f"the MLP activation {type(function).__name__} is neither SiLU nor GELU-tanh")


def _windows(model: nn.Module, config) -> list[int | None]:
    """Each block's attention window: per layer type where the config has them (Qwen2/3,
    Gemma3), else the config's sliding_window on every block (Mistral, Phi-3)."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not layer_types:
        return [window] * config.num_hidden_layers
    windows = []
    for layer_type in layer_types:
        if layer_type == "full_attention":
            windows.append(None)
        elif layer_type == "sliding_attention":
            windows.append(window)
        else:
            raise _unsupported(model, f"attention layer type {layer_type!r} (only full_attention and sliding_attention are described)")
    return windows


def _rope_tables(model: nn.Module, backbone: nn.Module, config) -> tuple[dict[str, RopeTable], list[str], int]:
    """(tables, table of each block, longest exact context) from the model's rotary module:
    one table, or one per layer type (Gemma3: local and global θ)."""
    rotary = getattr(backbone, "rotary_emb", None)
    if rotary is None:
        raise _unsupported(model, "the backbone has no rotary_emb module (position embeddings other than RoPE)")
    per_type = isinstance(getattr(rotary, "rope_type", None), dict)
    layer_tables = list(config.layer_types) if per_type else ["default"] * config.num_hidden_layers
    max_positions = config.max_position_embeddings
    tables = {}
    for name in sorted(set(layer_tables)):
        prefix = f"{name}_" if per_type else ""
        rope_type = rotary.rope_type[name] if per_type else rotary.rope_type
        if any(kind in rope_type for kind in _DYNAMIC_ROPE_TYPES):
            raise _unsupported(
                model, f"RoPE type {rope_type!r} rescales its frequencies with the sequence length; a static-shape bundle needs a fixed RoPE table"
            )
        if rope_type == "longrope":  # its short factors hold up to the original context; longer prompts switch tables
            parameters = config.rope_parameters[name] if per_type else config.rope_parameters
            max_positions = min(max_positions, int(parameters.get("original_max_position_embeddings") or max_positions))
        # the table at construction (a forward over a long prompt may have swapped in LongRoPE's long factors)
        inv_freq = getattr(rotary, f"{prefix}original_inv_freq", None)
        if inv_freq is None:
            inv_freq = getattr(rotary, f"{prefix}inv_freq")
        scaling = float(getattr(rotary, f"{prefix}attention_scaling", 1.0))
        tables[name] = RopeTable(tuple(float(f) for f in inv_freq.detach().float().cpu()), scaling)
    return tables, layer_tables, max_positions


def describe_architecture(layout: DecoderLayout, check: bool = True) -> ArchitectureDescription:
    """The runtime's description of ``layout.model``; raises UnsupportedArchitectureError
    naming the block feature it cannot describe. ``check`` runs the description against the
    model's own forward (:func:`check_description`).

    >>> loaded = load_model("smollm2-135m")                       # doctest: +SKIP
    >>> describe_architecture(loaded.layout).activation
    'silu'
    """
    model, backbone = layout.model, layout.backbone
    config = getattr(model.config, "text_config", model.config)
    backbone_name = _module_name(model, backbone)
    backbone_prefix = f"{backbone_name}." if backbone_name else ""
    for index, block in enumerate(layout.blocks):
        where = f"{layout.blocks_prefix}.{index}"
        _check_children(model, block, "block", where)
        _check_children(model, block.self_attn, "self_attn", f"{where}.self_attn")
        _check_children(model, block.mlp, "mlp", f"{where}.mlp")
    block = layout.blocks[0]
    attention = block.self_attn
    if not hasattr(block, "input_layernorm"):
        raise _unsupported(model, "its blocks have no input_layernorm (no norm before attention, as OLMo-2's post-norm blocks)")
    gemma_norms = hasattr(block, "pre_feedforward_layernorm")  # norms around each sub-layer's output too
    if gemma_norms != hasattr(block, "post_feedforward_layernorm"):
        raise _unsupported(model, "a block has only one of pre_feedforward_layernorm and post_feedforward_layernorm")

    def norm(attribute: str, owner: nn.Module = block, path: str = "") -> Norm:
        return _norm(model, getattr(owner, attribute), f"{path}{attribute}.weight")

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    for name in ("q_norm", "k_norm"):
        weight = getattr(getattr(attention, name, None), "weight", None)
        if weight is not None and weight.numel() != head_dim:
            raise _unsupported(model, f"self_attn.{name} normalises {weight.numel()} channels, not one head ({head_dim}): a q/k norm over the whole projection")

    sites = layout.input_sites()[:4]
    block_prefix = f"{layout.blocks_prefix}.0."
    linears = {kind: tuple(name[len(block_prefix) :] for name in site.linear_names) for kind, site in zip(("qkv", "o", "gate_up", "down"), sites)}
    gate_up_width = sum(layout.linear(name).out_features for name in sites[2].linear_names)
    embed = backbone.embed_tokens
    head = model.get_output_embeddings()
    embed_weight = f"{backbone_prefix}embed_tokens.weight"
    tables, layer_ropes, max_positions = _rope_tables(model, backbone, config)
    windows = _windows(model, config)
    scale = getattr(attention, "scaling", None)
    if scale is None:
        raise _unsupported(model, "the attention module has no `scaling` (its score scale cannot be read)")
    description = ArchitectureDescription(
        family=config.model_type,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=config.vocab_size,
        max_positions=int(max_positions),
        blocks_prefix=layout.blocks_prefix,
        embed_weight=embed_weight,
        embed_scale=float(getattr(embed, "embed_scale", 1.0)),
        lm_head_weight=embed_weight if head.weight is embed.weight else f"{_module_name(model, head)}.weight",
        final_norm=_norm(model, backbone.norm, f"{backbone_prefix}norm.weight"),
        pre_attention_norm=norm("input_layernorm"),
        pre_mlp_norm=norm("pre_feedforward_layernorm" if gemma_norms else "post_attention_layernorm"),
        post_attention_norm=norm("post_attention_layernorm") if gemma_norms else None,
        post_mlp_norm=norm("post_feedforward_layernorm") if gemma_norms else None,
        q_norm=norm("q_norm", attention, "self_attn.") if hasattr(attention, "q_norm") else None,
        k_norm=norm("k_norm", attention, "self_attn.") if hasattr(attention, "k_norm") else None,
        attention_scale=float(scale),
        attention_softcap=getattr(config, "attn_logit_softcapping", None),
        final_logit_softcap=getattr(config, "final_logit_softcapping", None),
        activation=_activation(model, block.mlp),
        linears=linears,
        output_splits={"qkv": (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), "gate_up": (gate_up_width // 2, gate_up_width // 2)},
        ropes=tables,
        layers=tuple(LayerAttention(rope, window) for rope, window in zip(layer_ropes, windows)),
    )
    if getattr(head, "bias", None) is not None:
        raise _unsupported(model, "the LM head has a bias")
    if check:
        check_description(layout, description)
    return description


@torch.no_grad()
def check_description(layout: DecoderLayout, description: ArchitectureDescription, tolerance: float = 1e-3, tokens: int = _PROBE_TOKENS) -> float:
    """Run the runtime's FP interpretation of ``description`` (every block on the CPU, the
    probe prompt in chunks) against the model's forward; raise if the logits differ beyond
    float tolerance. Returns the largest difference relative to the logits' range."""
    from quantkit.runtime.packing import ChunkRun
    from quantkit.runtime.scheduler import run_in_order
    from quantkit.runtime.subgraphs import KVCache, ModelParts, chunk_state, chunk_subgraphs

    model = layout.model
    device = next(model.parameters()).device
    ids = torch.randint(0, description.vocab_size, (tokens,), generator=torch.Generator().manual_seed(0))
    reference = model(input_ids=ids[None].to(device), use_cache=False).logits[0].float().cpu()
    weights = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}
    parts = ModelParts(description, weights, ["cpu-fp"] * description.num_blocks, {}, {}, lambda: None, _PROBE_CHUNK)
    cache, tasks, last_attention, states = KVCache(description.num_blocks, [layer.window for layer in description.layers]), [], {}, []
    for chunk, start in enumerate(range(0, tokens, _PROBE_CHUNK)):
        chunk_ids = ids[start : start + _PROBE_CHUNK]
        state = chunk_state(description, chunk_ids, torch.arange(start, start + chunk_ids.numel()), [ChunkRun(0, 0, chunk_ids.numel(), start)])
        chunk_subgraphs(parts, state, cache, chunk, last_attention, tasks)
        states.append(state)
    run_in_order(tasks)
    got = torch.cat([state.logits for state in states])
    difference = float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-6))
    if not difference <= tolerance:
        raise _unsupported(
            model,
            f"its forward pass differs from quantkit's description of it (family {description.family!r}; largest logit "
            f"difference {difference:.2e} of the logits' range on a probe prompt) — its blocks compute something the "
            "description lacks",
        )
    return difference
