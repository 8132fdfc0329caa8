"""``quantkit.eval.hf_reference``: the FP reference's lm-eval model scores exactly what
lm-eval's ``hf`` model scores while computing the LM head at fewer positions."""

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from quantkit.eval.hf_reference import ScoredPositionsHFLM, context_batches, positions_to_keep, shared_context_groups

from quantkit.data.corpus import load_documents

MAX_LENGTH = 64


def test_positions_to_keep_covers_every_rows_continuation():
    longest = {(5, 6, 7): 1, (5, 6): 2, (9, 0): 1}
    # Rows right-padded with 0 to length 5: need = padding + continuation.
    assert positions_to_keep(torch.tensor([[5, 6, 7, 0, 0], [5, 6, 0, 0, 0]]), longest) == max(2 + 1, 3 + 2)
    # A real trailing token 0: both splits ((9, 0) + pad, (9,) + pad) are considered; only (9, 0) is known.
    assert positions_to_keep(torch.tensor([[9, 0, 0]]), longest) == 1 + 1
    # A row that is no known input: keep everything (None).
    assert positions_to_keep(torch.tensor([[1, 2, 0]]), longest) is None
    # Never more than the row length.
    assert positions_to_keep(torch.tensor([[5, 6]]), {(5, 6): 5}) == 2


def test_shared_context_groups_are_shared_multi_token_untruncated_contexts():
    requests = [
        (None, [1, 2], [3]),
        (None, [1, 2], [4, 5]),
        (None, [1, 2], [6]),
        (None, [7], [8]),
        (None, [7], [9]),
        (None, [1] * 9, [2, 3]),
        (None, [1] * 9, [4, 5]),
    ]
    # [1, 2] is shared with a multi-token option; [7]'s options are one token each (lm-eval
    # already runs those once); [1]*9 would be left-truncated at max_length 9.
    assert shared_context_groups(requests, max_length=9) == {(1, 2): [0, 1, 2]}


def test_context_batches_fill_rows_longest_first():
    groups = {(1,): [0, 1], (1, 2, 3): [2, 3, 4], (4, 5): [5, 6], (6, 7, 8, 9): [7, 8, 9, 10, 11, 12]}
    # Longest context first; a batch takes contexts while their options fit in 5 rows; one
    # with more options than that is a batch of its own.
    assert context_batches(groups, 5) == [[(6, 7, 8, 9)], [(1, 2, 3), (4, 5)], [(1,)]]


@pytest.fixture(scope="module")
def models(tiny_tokenizer, tmp_path_factory):
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("hf-reference") / "model"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    args = {"pretrained": str(folder), "dtype": "float32", "max_length": MAX_LENGTH, "batch_size": 8, "device": "cpu"}
    return HFLM(**args), ScoredPositionsHFLM(**args)


def _lm_head_positions(lm) -> list[int]:
    seen: list[int] = []
    lm.model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0] * inputs[0].shape[1]))
    return seen


def test_scores_equal_lm_evals_hf_model_with_fewer_lm_head_positions(models, monkeypatch):
    hf, scored = models
    words = " ".join(load_documents("enwiki", "validation")[0].split()[:400]).split()
    # Contexts of many lengths (one longer than max_length: left-truncated), one- and
    # several-word continuations, and a context shared by four options.
    requests = [
        (" ".join(words[i : i + n]), " " + " ".join(words[i + n : i + n + k]))
        for i, (n, k) in enumerate([(3, 1), (8, 1), (20, 3), (5, 2), (60, 1), (12, 5), (30, 1), (7, 1), (2, 4)])
    ]
    requests += [(" ".join(words[100:110]), " " + word) for word in words[110:114]]
    # A context shared by options of several words (scored once, options from its KV cache).
    requests += [(" ".join(words[200:206]), " " + " ".join(words[206 + 3 * k : 206 + 3 * k + k + 1])) for k in range(4)]
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=request, idx=i) for i, request in enumerate(requests)]
    hf_positions, scored_positions = _lm_head_positions(hf), _lm_head_positions(scored)
    shared_contexts = []
    score_shared_contexts = scored._score_shared_contexts
    monkeypatch.setattr(
        scored,
        "_score_shared_contexts",
        lambda contexts, continuations: shared_contexts.append(tuple(map(len, continuations))) or score_shared_contexts(contexts, continuations),
    )
    expected, got = hf.loglikelihood(instances, disable_tqdm=True), scored.loglikelihood(instances, disable_tqdm=True)
    # Both four-option contexts (a word is several tokens of the tiny tokenizer), of two
    # lengths, in one padded batch.
    assert shared_contexts == [(4, 4)]
    assert [greedy for _, greedy in got] == [greedy for _, greedy in expected]
    assert [loglikelihood for loglikelihood, _ in got] == pytest.approx([loglikelihood for loglikelihood, _ in expected], rel=1e-5, abs=1e-5)
    assert sum(scored_positions) < 0.75 * sum(hf_positions)


def test_rolling_loglikelihood_equals_lm_evals_hf_model(models):
    hf, scored = models
    text = " ".join(load_documents("enwiki", "validation")[1].split()[:150])  # several max_length windows
    instances = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    assert scored.loglikelihood_rolling(instances, disable_tqdm=True) == pytest.approx(hf.loglikelihood_rolling(instances, disable_tqdm=True), rel=1e-6)
