"""Offline transforms fused into the model's weights before statistics (docs/design.md: "offline
transforms as their own stage"): the residual-stream rotation."""

from quantkit.transforms.rotation import ROTATIONS, ResidualRotation, rotate_residual_stream

__all__ = ["ROTATIONS", "ResidualRotation", "rotate_residual_stream"]
