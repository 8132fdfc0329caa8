"""Offline task files: built byte-for-byte the same twice, rebuilt only when their
settings change, and found by lm-eval through the TaskManager."""

import json

import pytest
from quantkit.eval.tasks import OFFLINE_GROUP, OFFLINE_TASKS, TaskDataConfig, build_task_data, check_task_names, default_task_folder, task_manager

from quantkit.errors import EvaluationError

SMALL = TaskDataConfig(num_docs=4, num_lastword=6, num_choice=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return build_task_data(SMALL, root / "a"), build_task_data(SMALL, root / "b")


def test_two_builds_are_byte_identical(built):
    first, second = built
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted([f"{t}.jsonl" for t in OFFLINE_TASKS] + [f"{t}.yaml" for t in (*OFFLINE_TASKS, OFFLINE_GROUP)] + ["settings.json"])
    for task in OFFLINE_TASKS:
        assert (first / f"{task}.jsonl").read_bytes() == (second / f"{task}.jsonl").read_bytes()
    counts = {task: len((first / f"{task}.jsonl").read_text().splitlines()) for task in OFFLINE_TASKS}
    assert counts == {"quantkit_wikitext": 4, "quantkit_lastword": 6, "quantkit_choice": 5}
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_rebuilt_only_when_settings_change(built):
    folder = built[0]
    before = (folder / "quantkit_lastword.jsonl").stat().st_mtime_ns
    assert build_task_data(SMALL, folder) == folder
    assert (folder / "quantkit_lastword.jsonl").stat().st_mtime_ns == before
    bigger = TaskDataConfig(num_docs=4, num_lastword=7, num_choice=5)
    build_task_data(bigger, folder)
    assert len((folder / "quantkit_lastword.jsonl").read_text().splitlines()) == 7
    assert json.loads((folder / "settings.json").read_text())["config"]["num_lastword"] == 7
    build_task_data(SMALL, folder)  # back, for the other tests
    assert (folder / "quantkit_lastword.jsonl").read_bytes() == (built[1] / "quantkit_lastword.jsonl").read_bytes()


def test_task_manager_loads_the_offline_tasks(built):
    manager = task_manager(SMALL, include_defaults=False, folder=built[0])
    assert set(manager.all_tasks) == {OFFLINE_GROUP, *OFFLINE_TASKS}
    loaded = manager.load([OFFLINE_GROUP])
    assert set(loaded["tasks"]) == set(OFFLINE_TASKS)
    choice = loaded["tasks"]["quantkit_choice"]
    doc = next(iter(choice.test_docs()))
    assert choice.doc_to_choice(doc) == doc["choices"] and choice.doc_to_target(doc) == doc["label"]
    lastword = loaded["tasks"]["quantkit_lastword"]
    doc = next(iter(lastword.test_docs()))
    assert lastword.doc_to_target(doc) == " " + doc["target"] and lastword.doc_to_text(doc) == doc["context"]
    assert loaded["tasks"]["quantkit_wikitext"].OUTPUT_TYPE == "loglikelihood_rolling"


def test_unknown_task_names_the_offline_tasks(built):
    manager = task_manager(SMALL, include_defaults=False, folder=built[0])
    check_task_names(manager, ["quantkit_choice"])
    with pytest.raises(
        EvaluationError, match="unknown task 'quantkit_choise'; the offline tasks are quantkit_offline .*quantkit_wikitext, quantkit_lastword, quantkit_choice"
    ):
        check_task_names(manager, ["quantkit_choice", "quantkit_choise"])


@pytest.mark.parametrize(("field", "value"), [("num_docs", 0), ("num_choices", 1), ("max_doc_chars", 10), ("version", 99)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field}: got {value}"):
        TaskDataConfig(**{field: value})


def test_each_size_setting_has_its_own_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    assert default_task_folder(TaskDataConfig()) == tmp_path / "eval" / "tasks"
    small, bigger = default_task_folder(SMALL), default_task_folder(TaskDataConfig(num_docs=4, num_lastword=7, num_choice=5))
    assert len({small, bigger, tmp_path / "eval" / "tasks"}) == 3 and small.parent == tmp_path / "eval" / "tasks"
    assert default_task_folder(TaskDataConfig(num_docs=4, num_lastword=6, num_choice=5)) == small  # a key of the settings, not of the call
