"""Run lm-eval on a bundle (through the runtime) or on the FP model (through lm-eval's
own ``hf`` model as ``hf-scored``: the LM head only where lm-eval scores, a shared context
once), with the offline tasks available; one function, :func:`evaluate`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.errors import EvaluationError, ModelLoadError

if TYPE_CHECKING:
    from quantkit.eval.tasks import TaskDataConfig

__all__ = ["evaluate", "results_table", "is_bundle"]


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (it holds a ``manifest.json``)."""
    from quantkit.runtime.bundle import MANIFEST_FILE

    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / MANIFEST_FILE).is_file()


def _model_spec(model: str | Path, npu: str, shadow: bool, max_length: int | None, kernels: str = "integer") -> tuple[str, dict]:
    if is_bundle(model):
        args = {"bundle": str(Path(model).expanduser()), "npu": npu, "shadow": shadow, "kernels": kernels}
    else:
        from quantkit.models.loading import prepare_model_folder

        try:
            folder, _ = prepare_model_folder(str(model))
        except ModelLoadError as error:
            raise EvaluationError(f"{model!r} is neither a bundle folder (one with manifest.json, written by `quantkit export`) nor a model: {error}") from None
        args = {"pretrained": str(folder), "dtype": "float32"}
    if max_length is not None:
        args["max_length"] = max_length
    from quantkit.eval.hf_reference import FP_REFERENCE_MODEL

    return ("quantkit" if "bundle" in args else FP_REFERENCE_MODEL), args


def evaluate(
    model: str | Path,
    tasks: str | Sequence[str],
    limit: int | float | None = None,
    npu: str = "cpu",
    shadow: bool = True,
    max_length: int | None = None,
    batch_size: int = 1,
    bootstrap_iters: int = 1000,
    output: str | Path | None = None,
    task_config: TaskDataConfig | None = None,
    include_paths: Sequence[str | Path] = (),
    kernels: str = "integer",
) -> dict:
    """lm-eval results of ``model`` on ``tasks`` (a list or a comma-separated string).

    ``model`` is a bundle folder — run by the runtime through the ``quantkit`` lm-eval
    model, on ``npu`` (``cpu`` with ``kernels`` "integer" or "qdq", or ``qnn``) with or
    without the shadow path — or a model
    that ``quantkit.models.loading.prepare_model_folder`` knows (a built-in name such as
    ``smollm2-135m``, a Hugging Face folder, a ``.gguf`` file), run in float32 by
    lm-eval's ``hf`` model (as ``hf-scored``: the LM head only at the scored positions,
    a shared context once; :mod:`quantkit.eval.hf_reference`): the FP reference. ``limit`` caps the items per task (a
    fraction when below 1). ``output`` also writes the results as JSON. ``task_config``
    sets the offline tasks' sizes (default :class:`quantkit.eval.tasks.TaskDataConfig`);
    ``include_paths`` adds folders of the user's own lm-eval task YAMLs (``--include_path``).
    Under ``accelerate launch`` each process scores its share of the requests; rank 0
    returns the gathered results, the other ranks None.

    >>> results = evaluate("bundle", "quantkit_lastword,quantkit_choice", limit=20)   # doctest: +SKIP
    >>> results["results"]["quantkit_lastword"]["acc,none"]                            # doctest: +SKIP
    0.45
    """
    import lm_eval
    import quantkit.eval.hf_reference  # noqa: F401  (registers the "hf-scored" lm-eval model)
    import quantkit.eval.lm  # noqa: F401  (registers the "quantkit" lm-eval model)
    from quantkit.eval.tasks import OFFLINE_GROUP, OFFLINE_TASKS, check_task_names, task_manager

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n for n in names if n]
    if not names:
        raise EvaluationError(f"no task given; the offline tasks are {', '.join((OFFLINE_GROUP, *OFFLINE_TASKS))}")
    if npu not in ("cpu", "qnn"):
        raise EvaluationError(f"npu: got {npu!r}, expected 'cpu' (ONNX Runtime CPU provider) or 'qnn' (QNN HTP)")
    offline = {OFFLINE_GROUP, *OFFLINE_TASKS}
    # Indexing lm-eval's own tasks takes seconds: only when a non-offline task is asked
    # for. The quantkit_ prefix is ours, so a misspelt offline task fails at once.
    manager = task_manager(task_config, include_defaults=False, include_paths=include_paths)
    if not all(n in offline or n.startswith("quantkit") or n in set(manager.all_tasks) for n in names):
        manager = task_manager(task_config, include_defaults=True, include_paths=include_paths)
    check_task_names(manager, names)
    from quantkit.runtime.sessions import CPU_KERNELS

    if kernels not in CPU_KERNELS:
        raise EvaluationError(f"kernels: got {kernels!r}, expected one of {', '.join(CPU_KERNELS)}")
    kind, model_args = _model_spec(model, npu, shadow, max_length, kernels)
    results = lm_eval.simple_evaluate(
        model=kind,
        model_args=model_args,
        tasks=names,
        limit=limit,
        batch_size=batch_size,
        device="cpu",
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
    )
    if results is None:  # not rank 0 of several processes (accelerate launch): rank 0 gathers and reports
        return None
    if output is not None:
        from lm_eval.utils import handle_non_serializable

        Path(output).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(output).expanduser().write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    return results


def results_table(results: dict) -> str:
    """The results as a small text table: task, metric, value, standard error."""
    rows = [("task", "metric", "value", "± stderr")]
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if metric in ("alias", "sample_len") or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append((task, metric, f"{value:.4f}", f"{stderr:.4f}" if isinstance(stderr, (int, float)) else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
