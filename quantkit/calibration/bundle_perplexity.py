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

import tempfile
from pathlib import Path

import torch

from quantkit.eval.perplexity import perplexity
from quantkit.models.loading import LoadedModel

__all__ = ["bundle_perplexity"]


def bundle_perplexity(
    calib: Path, validation_ids: torch.Tensor, chunk_size: int, device: str = "cpu", progress: bool = True, loaded: LoadedModel | None = None
) -> float:
    """Export the calibration in ``calib`` (a complete calibration folder, summary aside)
    at ``chunk_size``, load it with the runtime (ONNX Runtime CPU executor) and return its
    perplexity on ``validation_ids``. The bundle is deleted afterwards. ``loaded``: the
    calibration's model, exported from memory rather than loaded a second time."""
    # Imported here: the export reads calibration's config module, the runtime is the deployment side.
    from quantkit.export import export_bundle
    from quantkit.runtime.engine import BundleModel

    with tempfile.TemporaryDirectory(prefix=".bundle-check-", dir=calib) as scratch:
        bundle = export_bundle(calib, Path(scratch) / "bundle", chunk_size=chunk_size, device=device, progress=progress, loaded=loaded)
        runtime = BundleModel(bundle)
        return perplexity(lambda ids: runtime.prefill(ids[0])[None], validation_ids, desc="quantkit PPL (bundle through the runtime)", progress=progress)
