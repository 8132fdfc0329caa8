"""The architecture description: what one decoder block computes, as the runtime reads it.

A small, dependency-free contract between the export (which writes it into the bundle's
manifest from the model's config and module structure, ``quantkit.models.description``)
and the runtime (which interprets it for NPU and CPU-FP blocks alike, ``subgraphs``).
It replaces ``model_type`` switches: a family is supported when its block is one of the
shapes described here.

The block, for every family this describes (x: the residual stream, N: an RMSNorm):

    a = Attention(N_pre_attn(x));  x = x + N_post_attn(a)      (N_post_attn: Gemma3 only)
    m = MLP(N_pre_mlp(x));         x = x + N_post_mlp(m)       (N_post_mlp: Gemma3 only)

    N(x)        = x / √(mean(x²) + ε) · (offset + w)           offset 0, or 1 for Gemma
    Attention   : q, k, v = split(qkv(x)); q, k = N_q(q), N_k(k) per head (Qwen3, Gemma3);
                  RoPE on the first rotary_dim dims (Phi-3's partial rotary), with the
                  layer's table (Gemma3: local and global θ; Llama-3, YaRN, linear scaling
                  are baked into the table's frequencies and scaling);
                  softmax(s · q·kᵀ [softcapped]) · v over the keys in the layer's window;
                  o(·)
    MLP         : down(act(gate) · up), gate, up = split(gate_up(x)); act SiLU or GELU-tanh

The embeddings are scaled by ``embed_scale`` (Gemma: √hidden), the final norm and LM head
close the model, and the logits may be soft-capped: c · tanh(z / c).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = [
    "ARCHITECTURE_VERSION",
    "ACTIVATIONS",
    "SITE_KINDS",
    "Norm",
    "RopeTable",
    "LayerAttention",
    "ArchitectureDescription",
    "ArchitectureError",
]

ARCHITECTURE_VERSION = 1
ACTIVATIONS = ("silu", "gelu_tanh")
# The NPU sites of a block, in forward order (each one graph in the bundle).
SITE_KINDS = ("qkv", "o", "gate_up", "down")


class ArchitectureError(ValueError):
    """An architecture description is malformed, of another version, or inconsistent."""


@dataclass(frozen=True)
class Norm:
    """RMSNorm y = x / √(mean(x²) + eps) · (offset + weight); ``weight`` names the tensor
    (relative to the block for block norms, absolute for the final norm)."""

    weight: str
    eps: float
    offset: float = 0.0

    def __post_init__(self):
        if self.eps <= 0:
            raise ArchitectureError(f"norm {self.weight}: eps got {self.eps}, expected > 0")
        if self.offset not in (0.0, 1.0):
            raise ArchitectureError(f"norm {self.weight}: offset got {self.offset}, expected 0 (w·x) or 1 (Gemma's (1 + w)·x)")


@dataclass(frozen=True)
class RopeTable:
    """One RoPE table: angle(p, i) = p · inv_freq[i], cos/sin scaled by ``attention_scaling``
    (YaRN / LongRoPE's factor, 1 otherwise). It rotates the first 2·len(inv_freq) dims of
    each head (rotate-half convention); the rest pass through (partial rotary)."""

    inv_freq: tuple[float, ...]
    attention_scaling: float = 1.0

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)


@dataclass(frozen=True)
class LayerAttention:
    """Per block: which RoPE table it uses and its attention window (None: full causal).
    With a window W a query at position p sees the keys at positions p − W < j ≤ p."""

    rope: str
    window: int | None = None

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ArchitectureError(f"attention window got {self.window}, expected a positive number of tokens or None")


@dataclass(frozen=True)
class ArchitectureDescription:
    """Everything the runtime needs to execute the model's blocks (see the module docstring)."""

    family: str  # the source config's model_type, for messages and reports only
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int  # the longest context the description is exact for
    blocks_prefix: str  # tensor-name prefix of block b: f"{blocks_prefix}.{b}."
    embed_weight: str
    embed_scale: float
    lm_head_weight: str  # == embed_weight when the embeddings are tied
    final_norm: Norm
    pre_attention_norm: Norm
    pre_mlp_norm: Norm
    attention_scale: float
    activation: str
    linears: dict[str, tuple[str, ...]]  # site kind → its Linears, relative to the block, in output order
    output_splits: dict[str, tuple[int, ...]]  # qkv → (q, k, v) widths; gate_up → (gate, up) widths
    ropes: dict[str, RopeTable]
    layers: tuple[LayerAttention, ...]
    post_attention_norm: Norm | None = None
    post_mlp_norm: Norm | None = None
    q_norm: Norm | None = None  # over head_dim, per head, before RoPE
    k_norm: Norm | None = None
    attention_softcap: float | None = None
    final_logit_softcap: float | None = None
    version: int = field(default=ARCHITECTURE_VERSION)

    def __post_init__(self):
        if self.version != ARCHITECTURE_VERSION:
            raise ArchitectureError(
                f"architecture description version {self.version}; this quantkit reads version {ARCHITECTURE_VERSION} — export the bundle again"
            )
        if self.activation not in ACTIVATIONS:
            raise ArchitectureError(f"activation got {self.activation!r}, expected one of {', '.join(ACTIVATIONS)}")
        if sorted(self.linears) != sorted(SITE_KINDS):
            raise ArchitectureError(f"linears: got sites {sorted(self.linears)}, expected {list(SITE_KINDS)}")
        if self.num_heads % self.num_kv_heads:
            raise ArchitectureError(f"{self.num_heads} query heads do not group over {self.num_kv_heads} key/value heads")
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if tuple(self.output_splits.get("qkv", ())) != (q, kv, kv):
            raise ArchitectureError(f"output_splits['qkv']: got {self.output_splits.get('qkv')}, expected {(q, kv, kv)} from the head counts")
        if len(self.output_splits.get("gate_up", ())) != 2:
            raise ArchitectureError(f"output_splits['gate_up']: got {self.output_splits.get('gate_up')}, expected (gate width, up width)")
        for index, layer in enumerate(self.layers):
            if layer.rope not in self.ropes:
                raise ArchitectureError(f"block {index}: RoPE table {layer.rope!r} is not among {sorted(self.ropes)}")
        for name, table in self.ropes.items():
            if not 0 < table.rotary_dim <= self.head_dim:
                raise ArchitectureError(f"RoPE table {name!r} rotates {table.rotary_dim} dims; heads have {self.head_dim}")

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head_weight == self.embed_weight

    def block_tensor(self, block: int, relative: str) -> str:
        """The full tensor name of a block's tensor, e.g. "model.layers.3.input_layernorm.weight"."""
        return f"{self.blocks_prefix}.{block}.{relative}"

    def split_outputs(self, kind: str, outputs: list) -> list:
        """A site's outputs in its parts' order: q, k, v for qkv; gate, up for gate_up; the
        one output of o and down. A fused Linear (Phi-3's qkv_proj, gate_up_proj) has one
        output holding the parts side by side; it is split by ``output_splits``."""
        widths = self.output_splits.get(kind)
        if widths is None or len(outputs) == len(widths):
            return list(outputs)
        (fused,) = outputs
        return list(fused.split(list(widths), dim=-1))

    # -- the manifest form ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArchitectureDescription:
        """Read the manifest form back; raises ArchitectureError naming what is wrong."""
        if not isinstance(data, dict):
            raise ArchitectureError(f"the architecture description is a {type(data).__name__}, expected an object — export the bundle again")
        if data.get("version") != ARCHITECTURE_VERSION:
            raise ArchitectureError(
                f"architecture description version {data.get('version')!r}; this quantkit reads version {ARCHITECTURE_VERSION} — export the bundle again"
            )
        try:
            values = dict(data)
            for key in ("final_norm", "pre_attention_norm", "pre_mlp_norm", "post_attention_norm", "post_mlp_norm", "q_norm", "k_norm"):
                values[key] = Norm(**values[key]) if values.get(key) is not None else None
            values["ropes"] = {name: RopeTable(tuple(t["inv_freq"]), t["attention_scaling"]) for name, t in values["ropes"].items()}
            values["layers"] = tuple(LayerAttention(**layer) for layer in values["layers"])
            values["linears"] = {kind: tuple(names) for kind, names in values["linears"].items()}
            values["output_splits"] = {kind: tuple(widths) for kind, widths in values["output_splits"].items()}
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise ArchitectureError(
                f"the architecture description is incomplete or has unknown fields ({type(error).__name__}: {error}) — export the bundle again"
            ) from None
