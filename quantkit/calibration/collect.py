"""Run calibration sequences through the model and collect activation statistics.

Orchestration only (hooks, batching, progress, checkpoints); the math lives in
``observers.py`` and ``quantiles.py``. A run checkpoints after every batch into a
work folder; a killed run started again with the same settings resumes at the next
batch and ends with bit-identical statistics (the same batches are added in the same
order to the exact state that was saved).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from quantkit.calibration.observers import ActivationObserver, ObserverPass
from quantkit.errors import ResumeMismatchError
from quantkit.models.architecture import DecoderLayout
from quantkit.statistics import ActivationStatistics, TensorStatistics

__all__ = ["collect_activation_statistics", "CHECKPOINT_STATE", "CHECKPOINT_PROGRESS"]

CHECKPOINT_STATE = "observers.safetensors"
CHECKPOINT_PROGRESS = "progress.json"
BatchCallback = Callable[[ObserverPass, int], None]


def _build_observers(layout: DecoderLayout) -> tuple[dict[str, ActivationObserver], dict[str, ActivationObserver]]:
    """One input observer per shared-input site (its Linears share it), one output observer per Linear."""
    inputs, outputs = {}, {}
    for site in layout.input_sites():
        observer = ActivationObserver(f"{site.name}:input", site.num_channels)
        for name in site.linear_names:
            inputs[name] = observer
            outputs[name] = ActivationObserver(f"{name}:output", layout.linear(name).out_features)
    return inputs, outputs


def _all_observers(inputs, outputs) -> dict[str, ActivationObserver]:
    unique = {}
    for observer in list(inputs.values()) + list(outputs.values()):
        unique.setdefault(observer.name, observer)
    return unique


def _attach_hooks(layout: DecoderLayout, inputs, outputs, skip_positions: int = 0) -> list:
    """Observers on every Linear's input and output; the first ``skip_positions`` of each
    sequence (the sink rows, which run in FP on the CPU) are not observed."""
    handles = []
    first_of_site = {site.linear_names[0] for site in layout.input_sites()}
    for name, input_observer in inputs.items():
        output_observer = outputs[name]
        observe_input = name in first_of_site

        def hook(module, args, output, input_observer=input_observer, output_observer=output_observer, observe_input=observe_input):
            if observe_input:
                input_observer(args[0][..., skip_positions:, :])
            output_observer(output[..., skip_positions:, :])

        handles.append(layout.linear(name).register_forward_hook(hook))
    return handles


def _save_checkpoint(folder: Path, observers: dict[str, ActivationObserver], progress: dict) -> None:
    from safetensors.torch import save_file

    state = {f"{name}.{key}": value.detach().cpu().contiguous() for name, obs in observers.items() for key, value in obs.state_dict().items()}
    save_file(state, str(folder / f"{CHECKPOINT_STATE}.tmp"))
    os.replace(folder / f"{CHECKPOINT_STATE}.tmp", folder / CHECKPOINT_STATE)
    (folder / f"{CHECKPOINT_PROGRESS}.tmp").write_text(json.dumps(progress))
    os.replace(folder / f"{CHECKPOINT_PROGRESS}.tmp", folder / CHECKPOINT_PROGRESS)


def _load_checkpoint(folder: Path, observers: dict[str, ActivationObserver], fingerprint: str) -> dict | None:
    progress_file = folder / CHECKPOINT_PROGRESS
    if not progress_file.is_file():
        return None
    progress = json.loads(progress_file.read_text())
    if progress.get("fingerprint") != fingerprint:
        raise ResumeMismatchError(
            f"{folder} holds a partial calibration run made with other settings (model, data or statistics options); "
            "run again with the same settings to resume it, or delete that folder (or pass --restart) to start over"
        )
    from safetensors.torch import load_file

    state = load_file(str(folder / CHECKPOINT_STATE))
    for name, observer in observers.items():
        observer.load_state_dict({key: state[f"{name}.{key}"] for key in observer.state_dict()})
    return progress


@torch.no_grad()
def collect_activation_statistics(
    layout: DecoderLayout,
    sequences: torch.Tensor,
    *,
    batch_size: int = 4,
    outlier_quantile: float = 0.999,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_batch_end: BatchCallback | None = None,
    skip_positions: int = 0,
) -> ActivationStatistics:
    """Statistics of the input and output of every decoder Linear over ``sequences`` [N, L],
    positions ``skip_positions``… of each (the NPU never sees the sink rows before them).

    Two passes (see ``observers.py``): ranges and quantiles, then per-channel outliers
    beyond the ``outlier_quantile`` of |x| (the INT8 per-tensor clip point).
    """
    inputs, outputs = _build_observers(layout)
    observers = _all_observers(inputs, outputs)
    device = next(layout.model.parameters()).device
    for observer in observers.values():
        observer.to(device)
    batches = sequences.split(batch_size)
    done = {ObserverPass.RANGE.value: 0, ObserverPass.OUTLIERS.value: 0}
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        saved = _load_checkpoint(checkpoint_dir, observers, fingerprint)
        if saved is not None:
            done = saved["batches_done"]

    handles = _attach_hooks(layout, inputs, outputs, skip_positions)
    try:
        for current in (ObserverPass.RANGE, ObserverPass.OUTLIERS):
            if current is ObserverPass.OUTLIERS:
                for observer in observers.values():
                    observer.set_outlier_threshold(outlier_quantile)
            bar = tqdm(total=len(batches), initial=done[current.value], desc=f"statistics ({current.value} pass)", unit="batch", disable=not progress)
            for index in range(done[current.value], len(batches)):
                layout.backbone(input_ids=batches[index].to(device), use_cache=False)
                done[current.value] = index + 1
                if checkpoint_dir is not None:
                    _save_checkpoint(checkpoint_dir, observers, {"fingerprint": fingerprint, "batches_done": done})
                bar.update(1)
                if on_batch_end is not None:
                    on_batch_end(current, index)
            bar.close()
    finally:
        for handle in handles:
            handle.remove()

    statistics = ActivationStatistics()
    for name in layout.linear_names():
        statistics[f"{name}:input"] = TensorStatistics.from_observer(inputs[name])
        statistics[f"{name}:output"] = TensorStatistics.from_observer(outputs[name])
    return statistics
