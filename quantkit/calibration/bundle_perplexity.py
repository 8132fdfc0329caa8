"""The summary's quantkit perplexity, measured on what ships: the calibration exported
into a temporary bundle and run through the runtime on the validation tokens.

Calibration's searches run the deployed arithmetic in torch (``quantkit.runtime.qdq``),
which sums in another order than ONNX Runtime's kernels. At A16 that moves perplexity by
float noise; at A8 a flipped rounding is a whole quantization step and the flips cascade
through the blocks, so the simulation and the bundle are two draws of the same arithmetic:
on SmolLM2's auto calibration (99% of the MACs at A8) the simulation said 20.976 and the
exported bundle measured 21.059 on the same validation tokens (+0.40%). The figure a user
is shown is therefore the bundle's own, at the chunk size the export uses by default;
another chunk size is another summation order (the same calibration exported at chunk 64
measured 0.09% away from chunk 256).
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantkit.eval.perplexity import perplexity
from quantkit.models.loading import LoadedModel

__all__ = ["export_check_bundle", "bundle_perplexity"]


def export_check_bundle(calib: Path, out: Path, chunk_size: int, loaded: LoadedModel, device: str = "cpu", progress: bool = True) -> Path:
    """Export the calibration in ``calib`` (a complete calibration folder, summary aside)
    to ``out`` at ``chunk_size``, from ``loaded`` — the calibration's model, in memory,
    with its float Linears — rather than a second copy loaded from disk."""
    # Imported here: the export reads calibration's config module.
    from quantkit.export import export_bundle

    return export_bundle(calib, out, chunk_size=chunk_size, device=device, progress=progress, loaded=loaded)


def bundle_perplexity(bundle: Path, validation_ids: torch.Tensor, progress: bool = True) -> float:
    """The perplexity of ``bundle`` loaded with the runtime (ONNX Runtime CPU executor) on ``validation_ids``."""
    from quantkit.runtime.engine import BundleModel  # the deployment side

    runtime = BundleModel(bundle)
    return perplexity(lambda ids: runtime.prefill(ids[0])[None], validation_ids, desc="quantkit PPL (bundle through the runtime)", progress=progress)
