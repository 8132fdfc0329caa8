"""quantkit.eval: perplexity and accuracy evaluation of FP and quantized models.

Import-light: lm-eval and the runtime load only when :func:`evaluate` or
:func:`task_manager` runs. ``import quantkit.eval.lm`` registers the ``quantkit`` lm-eval
model (a bundle run by the runtime), ``import quantkit.eval.hf_reference`` the ``hf-scored``
model (the FP reference: lm-eval's hf model, LM head only at scored positions, shared
contexts once);
:func:`evaluate` does both imports itself.
"""

from quantkit.eval.harness import evaluate, results_table
from quantkit.eval.perplexity import perplexity
from quantkit.eval.tasks import OFFLINE_GROUP, OFFLINE_TASKS, TaskDataConfig, build_task_data, task_manager

__all__ = ["perplexity", "evaluate", "results_table", "task_manager", "build_task_data", "TaskDataConfig", "OFFLINE_GROUP", "OFFLINE_TASKS"]
