"""Offline rotation of the residual stream (QuaRot's R1, arXiv 2404.00456 §4.1;
SpinQuant's R1, arXiv 2405.16406 §3.1), fused into the model's weights before any
statistics are taken.

Every Linear that reads the residual stream does so through an RMSNorm, and RMSNorm
commutes with an orthogonal R once its scale is folded into the next Linears:
rms(x R) = rms(x), so norm(x R) = norm(x) R. With x' = x R everywhere in the residual
stream the model computes the same function, while the inputs of q/k/v and gate/up —
normalised tokens whose few massive channels dominate one per-tensor INT8 range — are
spread over all channels (a randomized Hadamard R makes every channel of a token carry
about |x|/√d). The runtime needs nothing new: the rotated model is a model with other
weights (norm scales folded to 1, the LM head untied from the embeddings).

    input side  (q, k, v, gate, up):   W' = W · diag(w_norm) · R          (y = norm(x') W'ᵀ)
    output side (o, down):             W' = Rᵀ · W,  b' = b · R           (x' += y R)
    embeddings:                        E' = E · R
    LM head:                           H' = H · diag(w_final) · R

Measured on SmolLM2-135M it does not pay (README, "Residual-stream rotation"): its residual
stream carries massive activations that the pre-MLP norms null with near-zero scales, and
rotated, that energy meets every weight column's rounding error. So it is opt-in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from quantkit.errors import UnsupportedArchitectureError
from quantkit.runtime.architecture import ArchitectureDescription, Norm
from quantkit.runtime.bundle import graph_kind
from quantkit.transforms.hadamard import HadamardUnavailable, hadamard_construction, random_hadamard

if TYPE_CHECKING:  # quantkit.models loads models through this module: no import cycle at run time
    from quantkit.models.architecture import DecoderLayout

__all__ = ["ROTATIONS", "ResidualRotation", "rotate_residual_stream"]

ROTATIONS = ("none", "hadamard")
_NORMED_INPUTS = {"qkv": lambda d: d.pre_attention_norm, "gate_up": lambda d: d.pre_mlp_norm}  # sites reading the residual through a norm


@dataclass(frozen=True)
class ResidualRotation:
    """What was fused into the weights: recorded in the calibration and the bundle so the
    report and a reader know the basis the NPU graphs see."""

    kind: str  # "hadamard": R = diag(s) · H / √d, signs s from ``seed``
    seed: int
    construction: str  # how H was built, e.g. "paley2(17) x sylvester(16)"
    hidden_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def _scale(model: nn.Module, norm: Norm, tensor_name: str) -> torch.Tensor:
    """The norm's effective per-channel multiplier (offset + w), float64."""
    return model.get_parameter(tensor_name).detach().double() + norm.offset


def _make_identity(model: nn.Module, norm: Norm, tensor_name: str) -> None:
    """After folding, the norm multiplies by 1: w = 1 − offset."""
    parameter = model.get_parameter(tensor_name)
    parameter.data.fill_(1.0 - norm.offset)


def _rotate_inputs(linear: nn.Linear, scale: torch.Tensor, rotation: torch.Tensor) -> None:
    weight = linear.weight.detach().double()
    linear.weight.data = (weight * scale[None, :] @ rotation).to(linear.weight.dtype)  # W' = W · diag(w) · R


def _rotate_outputs(linear: nn.Linear, rotation: torch.Tensor) -> None:
    weight = linear.weight.detach().double()
    linear.weight.data = (rotation.T @ weight).to(linear.weight.dtype)  # W' = Rᵀ · W
    if linear.bias is not None:
        linear.bias.data = (linear.bias.detach().double() @ rotation).to(linear.bias.dtype)  # b' = b · R


@torch.no_grad()
def rotate_residual_stream(layout: DecoderLayout, description: ArchitectureDescription, seed: int = 0) -> ResidualRotation:
    """Fold the norm scales and rotate the residual stream of ``layout.model`` in place by
    a randomized Hadamard matrix; returns the record of it. ``description`` is the
    model's description before the rotation (norm names and kinds, each site's Linears).

    >>> rotation = rotate_residual_stream(loaded.layout, loaded.architecture)   # doctest: +SKIP
    """
    model, backbone = layout.model, layout.backbone
    if description.post_attention_norm is not None or description.post_mlp_norm is not None:
        raise UnsupportedArchitectureError(
            f"--rotation hadamard: {description.family} normalises each sub-layer's output before the residual add "
            "(post-attention / post-FFN norms, Gemma-style), whose scale cannot be folded through a rotation; "
            "calibrate this model with --rotation none"
        )
    hidden = description.hidden_size
    try:
        construction = hadamard_construction(hidden)
    except HadamardUnavailable as error:
        raise UnsupportedArchitectureError(f"--rotation hadamard: hidden size {hidden}: {error}; calibrate this model with --rotation none") from None
    device = next(model.parameters()).device
    rotation = random_hadamard(hidden, seed).to(device)
    for site in layout.input_sites():
        kind = graph_kind(site.linear_names[0])
        if kind in _NORMED_INPUTS:
            norm = _NORMED_INPUTS[kind](description)
            scale = _scale(model, norm, description.block_tensor(site.block_index, norm.weight))
            for name in site.linear_names:
                _rotate_inputs(layout.linear(name), scale, rotation)
        else:
            for name in site.linear_names:
                _rotate_outputs(layout.linear(name), rotation)
    for block in range(layout.num_blocks):  # each norm's scale now lives in the Linears that read it
        for norm in (description.pre_attention_norm, description.pre_mlp_norm):
            _make_identity(model, norm, description.block_tensor(block, norm.weight))
    embed = backbone.embed_tokens
    head = model.get_output_embeddings()
    final_scale = _scale(model, description.final_norm, description.final_norm.weight)
    head_weight = (head.weight.detach().double() * final_scale[None, :] @ rotation).to(head.weight.dtype)  # H' = H · diag(w_final) · R
    embed.weight.data = (embed.weight.detach().double() @ rotation).to(embed.weight.dtype)  # E' = E · R
    head.weight = nn.Parameter(head_weight, requires_grad=False)  # untied: E' ≠ H' once w_final is folded
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    _make_identity(model, description.final_norm, description.final_norm.weight)
    return ResidualRotation(kind="hadamard", seed=seed, construction=construction, hidden_size=hidden)
