"""Find the decoder blocks of a causal LM by module structure, not by model name.

Supported: the Llama family as transformers implements it — Llama, Mistral, Qwen2,
Qwen3, Gemma3 (text), Phi-3 and anything else shaped the same way: a backbone with
``embed_tokens``, a ``layers`` ModuleList of blocks, each with ``self_attn.{q,k,v,o}_proj``
(or a fused ``qkv_proj`` beside ``o_proj``, Phi-3) and ``mlp.{gate,up,down}_proj`` (or a
fused ``gate_up_proj`` beside ``down_proj``) as ``nn.Linear``. What each block computes
around its Linears is described by ``quantkit.models.description``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from quantkit.errors import UnsupportedArchitectureError

__all__ = [
    "SUPPORTED_FAMILIES",
    "ATTENTION_LINEARS",
    "MLP_LINEARS",
    "InputSite",
    "DecoderLayout",
    "find_decoder_layout",
]

SUPPORTED_FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma3 (text)", "Phi-3")
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")

# Linears of a block that read the same input tensor, in forward order: the paper's
# NPU subgraphs quantize each such input once (arXiv 2407.05858 §3.4, Fig. 8). Each site
# is either separate Linears or one fused Linear whose output holds the parts side by
# side (Phi-3's qkv_proj and gate_up_proj); both map onto the same NPU graph kinds.
_SHARED_INPUT_GROUPS = (
    ("self_attn", (("q_proj", "k_proj", "v_proj"), ("qkv_proj",))),
    ("self_attn", (("o_proj",),)),
    ("mlp", (("gate_proj", "up_proj"), ("gate_up_proj",))),
    ("mlp", (("down_proj",),)),
)


@dataclass(frozen=True)
class InputSite:
    """One activation tensor feeding one or more Linears of a block."""

    block_index: int
    linear_names: tuple[str, ...]  # full module names, e.g. "model.layers.3.self_attn.q_proj"
    num_channels: int

    @property
    def name(self) -> str:
        return self.linear_names[0]


@dataclass(frozen=True)
class DecoderLayout:
    """Where the decoder blocks and their Linears are in a loaded model."""

    model: nn.Module
    backbone: nn.Module  # the module holding embed_tokens, layers and the final norm
    blocks_prefix: str  # module name of the layers ModuleList, e.g. "model.layers"

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def linear_names(self) -> list[str]:
        """Full names of every Linear in the decoder blocks, in forward order."""
        return [name for site in self.input_sites() for name in site.linear_names]

    def linear(self, name: str) -> nn.Linear:
        return self.model.get_submodule(name)

    def input_sites(self) -> list[InputSite]:
        return list(self._input_sites)

    @cached_property
    def _input_sites(self) -> tuple[InputSite, ...]:
        # Read once, from the FP model: later the Linears may be swapped for simulated ones.
        sites = []
        for index, block in enumerate(self.blocks):
            for parent_name, forms in _SHARED_INPUT_GROUPS:
                parent = getattr(block, parent_name)
                linear_names = _present_form(parent, forms)
                first = getattr(parent, linear_names[0])
                sites.append(
                    InputSite(
                        block_index=index,
                        linear_names=tuple(f"{self.blocks_prefix}.{index}.{parent_name}.{n}" for n in linear_names),
                        num_channels=first.in_features,
                    )
                )
        return tuple(sites)


def _present_form(parent: nn.Module, forms: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first of a site's forms (separate or fused Linears) that ``parent`` has."""
    for names in forms:
        if all(isinstance(getattr(parent, n, None), nn.Linear) for n in names):
            return names
    return None


def _is_decoder_block(module: nn.Module) -> bool:
    for parent_name, forms in _SHARED_INPUT_GROUPS:
        parent = getattr(module, parent_name, None)
        if parent is None or _present_form(parent, forms) is None:
            return False
    return True


def find_decoder_layout(model: nn.Module) -> DecoderLayout:
    """Locate the decoder blocks of ``model``; raise a clear error if it has none we support."""
    for name, module in model.named_modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(module, "embed_tokens") and all(_is_decoder_block(block) for block in layers):
            prefix = f"{name}.layers" if name else "layers"
            layout = DecoderLayout(model=model, backbone=module, blocks_prefix=prefix)
            layout.input_sites()  # read the structure now, while every Linear is an FP nn.Linear
            return layout
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} is not a supported decoder architecture. quantkit supports the Llama "
        f"family as transformers implements it: {', '.join(SUPPORTED_FAMILIES)} — a backbone with "
        "embed_tokens and a `layers` list of blocks, each with self_attn.{q,k,v,o}_proj (or qkv_proj + o_proj) and "
        "mlp.{gate,up,down}_proj (or gate_up_proj + down_proj) Linear layers. Convert the model to one of these architectures."
    )
