"""Offline lm-eval tasks: JSONL files built from the held-out enwiki split, with the task
YAMLs beside them in the quantkit cache, and a ``TaskManager`` that finds them.

No download is needed: the text is the ``test`` split of the built-in enwiki corpus
(``quantkit.data.corpus.load_documents("enwiki", "test")``), never seen by calibration
(``calibration``) or by the settings chosen on ``validation``. How each item is cut is
documented in :mod:`quantkit.eval.task_data`. The tasks:

- ``quantkit_wikitext`` — rolling log-likelihood of running-text segments
  (``loglikelihood_rolling``; word_perplexity, byte_perplexity, bits_per_byte), as
  lm-eval's ``wikitext``.
- ``quantkit_lastword`` — the last word of a sentence given the passage before it
  (``loglikelihood``; acc = greedy match, perplexity), as ``lambada_openai``.
- ``quantkit_choice`` — the true next sentence among sentences of other articles
  (``multiple_choice``; acc, acc_norm).

``quantkit_offline`` is the group of all three. The files live in
``cache_dir("eval", "tasks")`` (default sizes) or ``cache_dir("eval", "tasks", KEY)``
(other :class:`TaskDataConfig` sizes, KEY from the settings, so a regression suite's
larger tasks and the default ones are both kept) with a ``settings.json`` holding the build settings, the
sha256 of the source split and the task configs (whose data paths name the folder); they
are rebuilt (atomically) when any of these changes. A change to how items are cut bumps
``TASKS_VERSION``.

>>> from quantkit.eval.tasks import task_manager
>>> manager = task_manager()                                   # doctest: +SKIP
>>> import lm_eval                                             # doctest: +SKIP
>>> lm_eval.simple_evaluate(model="hf", model_args="pretrained=FOLDER", tasks=["quantkit_offline"], task_manager=manager)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quantkit.cache import atomic_directory, cache_dir
from quantkit.errors import EvaluationError

__all__ = ["OFFLINE_GROUP", "OFFLINE_TASKS", "TASKS_VERSION", "TaskDataConfig", "build_task_data", "default_task_folder", "task_manager", "check_task_names"]

OFFLINE_GROUP = "quantkit_offline"
OFFLINE_TASKS = ("quantkit_wikitext", "quantkit_lastword", "quantkit_choice")
TASKS_VERSION = 1
_SOURCE = ("enwiki", "test")
_SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class TaskDataConfig:
    """How many items each offline task has, and the seed that picks them."""

    num_docs: int = 20  # quantkit_wikitext segments
    max_doc_chars: int = 1500
    num_lastword: int = 200
    num_choice: int = 200
    num_choices: int = 4
    seed: int = 1234
    version: int = TASKS_VERSION

    def __post_init__(self):
        for name in ("num_docs", "num_lastword", "num_choice"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected at least 1")
        if self.max_doc_chars < 100:
            raise ValueError(f"max_doc_chars: got {self.max_doc_chars}, expected at least 100")
        if self.num_choices < 2:
            raise ValueError(f"num_choices: got {self.num_choices}, expected at least 2")
        if self.version != TASKS_VERSION:
            raise ValueError(f"version: got {self.version}, expected {TASKS_VERSION}")


def _task_yamls(folder: Path) -> dict[str, dict]:
    """The lm-eval task configs, reading the JSONL files in ``folder``."""

    def data(name: str) -> dict:
        return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")}}, "test_split": "test"}

    metadata = {"version": float(TASKS_VERSION)}
    return {
        "quantkit_wikitext": {
            "task": "quantkit_wikitext",
            **data("quantkit_wikitext"),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {"metric": m, "aggregation": a, "higher_is_better": False}
                for m, a in (("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"), ("bits_per_byte", "bits_per_byte"))
            ],
            "metadata": metadata,
        },
        "quantkit_lastword": {
            "task": "quantkit_lastword",
            **data("quantkit_lastword"),
            "output_type": "loglikelihood",
            "doc_to_text": "{{context}}",
            "doc_to_target": "{{' ' + target}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": metadata,
        },
        "quantkit_choice": {
            "task": "quantkit_choice",
            **data("quantkit_choice"),
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": metadata,
        },
        OFFLINE_GROUP: {"group": OFFLINE_GROUP, "task": list(OFFLINE_TASKS), "metadata": metadata},
    }


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def _settings(config: TaskDataConfig, folder: Path) -> dict:
    from quantkit.data.enwiki import enwiki_split_files
    from quantkit.hashing import file_sha256

    source = enwiki_split_files()[_SOURCE[1]]
    source_file = {"data": _SOURCE[0], "split": _SOURCE[1], "sha256": file_sha256(source)}
    # The task configs are part of the settings: a changed YAML is a rebuild, not a stale file.
    return {"config": dataclasses.asdict(config), "source": source_file, "tasks": _task_yamls(folder)}


def default_task_folder(config: TaskDataConfig) -> Path:
    """Where :func:`build_task_data` puts the tasks of ``config`` by default: one folder
    per size settings, the default sizes at ``cache_dir("eval", "tasks")``."""
    if config == TaskDataConfig():
        return cache_dir("eval", "tasks")
    import hashlib

    key = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("eval", "tasks", f"sized-{key}")


def build_task_data(config: TaskDataConfig | None = None, folder: str | Path | None = None) -> Path:
    """Build the offline tasks' JSONL and YAML files into ``folder`` (default
    :func:`default_task_folder`) unless they are there for these settings; return it.

    >>> folder = build_task_data()                                 # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())                   # doctest: +SKIP
    ['quantkit_choice.jsonl', 'quantkit_choice.yaml', ..., 'settings.json']
    """
    import yaml
    from quantkit.eval.task_data import choice_items, last_word_items, perplexity_documents

    from quantkit.data.corpus import load_documents

    config = config or TaskDataConfig()
    folder = Path(folder).expanduser().absolute() if folder is not None else default_task_folder(config)
    settings = _settings(config, folder)
    settings_path = folder / _SETTINGS_FILE
    if settings_path.is_file():
        try:
            if json.loads(settings_path.read_text()) == settings:
                return folder
        except json.JSONDecodeError:
            pass  # damaged: rebuild
    documents = load_documents(*_SOURCE)
    records = {
        "quantkit_wikitext": perplexity_documents(documents, config.num_docs, config.max_doc_chars),
        "quantkit_lastword": last_word_items(documents, config.num_lastword, config.seed),
        "quantkit_choice": choice_items(documents, config.num_choice, config.seed, num_choices=config.num_choices),
    }
    with atomic_directory(folder) as staging:
        for name, items in records.items():
            _write_jsonl(staging / f"{name}.jsonl", items)
        for name, task in _task_yamls(folder).items():
            (staging / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
        (staging / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return folder


_MANAGERS: dict[tuple[str, bool], object] = {}


def task_manager(
    config: TaskDataConfig | None = None, include_defaults: bool = True, folder: str | Path | None = None, include_paths: Sequence[str | Path] = ()
):
    """An ``lm_eval.tasks.TaskManager`` that knows the offline tasks (building their data
    if missing), the task YAMLs under ``include_paths`` (lm-eval's ``--include_path``: a
    user's own tasks) and, with ``include_defaults``, every task lm-eval ships (indexing
    those takes ~10 s, so a manager is kept per folder). Standard tasks work through it
    wherever their data can be loaded."""
    from lm_eval.tasks import TaskManager

    extra = [Path(p).expanduser() for p in include_paths]
    for path in extra:
        if not path.is_dir():
            raise EvaluationError(f"include path {str(path)!r} is not a folder; pass a folder of lm-eval task YAML files")
    folder = build_task_data(config, folder)
    key = (str(folder), include_defaults, *map(str, extra))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=[str(folder), *map(str, extra)], include_defaults=include_defaults)
    return _MANAGERS[key]


def check_task_names(manager, tasks: list[str]) -> None:
    """Raise EvaluationError, listing the offline tasks, when a name is unknown to ``manager``."""
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        offline = ", ".join((f"{OFFLINE_GROUP} (all three)", *OFFLINE_TASKS))
        raise EvaluationError(
            f"unknown task {', '.join(map(repr, unknown))}; the offline tasks are {offline}, and lm-eval's own tasks (lambada_openai, hellaswag, …) work where their data can be downloaded"
        )
