"""The ``quantkit`` lm-eval model on a tiny bundle: its scores equal a direct computation
from ``BundleModel.prefill`` logits, and each distinct input runs once."""

import math

import pytest
import torch
from lm_eval.api.instance import Instance
from quantkit.eval.lm import QuantkitLM, plan_prefixes
from quantkit.runtime.bundle import BundleError
from quantkit.runtime.engine import BundleModel

from quantkit.errors import EvaluationError

TEXT = (
    "The participating institutions each broadcast, in real time, a frequency signal with timecodes, "
    "which is their estimate of TAI. Time codes are usually published in the form of UTC."
)


@pytest.fixture(scope="module")
def lm(tiny_bundle):
    return QuantkitLM(bundle=str(tiny_bundle))


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    return BundleModel(tiny_bundle)


def _instances(kind, arguments):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def _direct_logprobs(reference, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | tokens[:i]) for i ≥ 1, from one prefill of the whole sequence."""
    logits = reference.prefill(torch.tensor(tokens[:-1]))
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]


class _CountingPrefill:
    def __init__(self, prefill):
        self.prefill, self.calls = prefill, []

    def __call__(self, ids):
        self.calls.append(len(ids))
        return self.prefill(ids)


def test_plan_prefixes_runs_each_distinct_input_once():
    inputs = [(1, 2), (1, 2, 3), (4,), (1, 2, 3), (1, 5), (4, 1)]
    groups = plan_prefixes(inputs)
    assert [g[0] for g in groups] == [(1, 2, 3), (1, 5), (4, 1)]
    assert sorted(i for _, members in groups for i in members) == list(range(len(inputs)))
    for sequence, members in groups:
        assert all(sequence[: len(inputs[i])] == inputs[i] for i in members)


def test_loglikelihood_equals_direct_computation(tiny_bundle, reference, monkeypatch):
    lm = QuantkitLM(bundle=str(tiny_bundle), pack_tokens=0)  # one prefill per distinct input, counted below
    context = TEXT[:120]
    requests = [
        (context, " frequency signal"),
        (context, " time"),  # shares the context: several inputs, one prefill if one is a prefix
        (context, " frequency signal"),  # identical: computed once
        ("", TEXT[:40]),  # empty context: conditioned on the prefix token
        (TEXT[:60] + " ", "which"),  # trailing space moves to the continuation
    ]
    counting = _CountingPrefill(lm.model.prefill)
    monkeypatch.setattr(lm.model, "prefill", counting)
    got = lm.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(requests, got, strict=True):
        if context:
            context_enc, continuation_enc = lm._encode_pair(context, continuation)
        else:
            context_enc, continuation_enc = [lm.prefix_token_id], lm.tok_encode(continuation)
        tokens = context_enc + continuation_enc
        logits = reference.prefill(torch.tensor(tokens[:-1]))[-len(continuation_enc) :]
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation_enc)[:, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)
        assert greedy == bool((logits.argmax(-1) == torch.tensor(continuation_enc)).all())
        assert logprob < 0
    assert len(counting.calls) <= 4  # five requests, the duplicate did not run again
    assert got[0] == got[2]


def test_greedy_flag_is_true_for_the_models_own_prediction(lm, reference):
    context_enc = lm.tok_encode(TEXT[:80])
    predicted = int(reference.prefill(torch.tensor(context_enc))[-1].argmax())
    request = [((None, None), context_enc, [predicted])]
    ((logprob, greedy),) = lm._loglikelihood_tokens(request, disable_tqdm=True)
    assert greedy and logprob > math.log(1 / lm.tokenizer.vocab_size)


def test_rolling_loglikelihood_is_the_sum_over_tokens(lm, reference):
    tokens = lm.tok_encode(TEXT)
    assert 16 < len(tokens) < lm.max_length  # one window, longer than a chunk
    (got,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    expected = _direct_logprobs(reference, [lm.prefix_token_id, *tokens]).sum()
    assert got == pytest.approx(float(expected), abs=1e-3)


def test_rolling_windows_condition_on_one_token_before_them(tiny_bundle, reference):
    window = 16
    lm = QuantkitLM(bundle=str(tiny_bundle), max_length=window)
    tokens = lm.tok_encode(TEXT)
    (got,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    # Disjoint windows of `window` predicted tokens; the last one predicts what is left,
    # reading back as far as the window allows.
    expected, predicted = 0.0, 0
    while predicted < len(tokens):
        count = min(window, len(tokens) - predicted)
        history = ([lm.prefix_token_id] + tokens)[: predicted + count][-window:]  # inputs: the tokens before each target
        logits = reference.prefill(torch.tensor(history))[-count:]
        expected += float(torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens[predicted : predicted + count])[:, None]).sum())
        predicted += count
    assert len(tokens) > 2 * window
    assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.skipif(not hasattr(BundleModel, "generate"), reason="BundleModel.generate is not there yet")
def test_generate_until_is_greedy_and_stops(lm, reference):
    context = TEXT[:100]
    prompt = torch.tensor(lm.tok_encode(context))
    direct = list(reference.generate(prompt, 8, temperature=0.0, stop_token_ids=(lm.eot_token_id,)))
    direct_tokens = [t for t in direct if t != lm.eot_token_id]
    direct_text = lm.tok_decode(direct_tokens)
    requests = [(context, {"until": ["\u2603"], "max_gen_toks": 8}), (context, {"until": ["\u2603"], "max_gen_toks": 3})]
    full, short = lm.generate_until(_instances("generate_until", requests), disable_tqdm=True)
    assert full == direct_text
    assert short == lm.tok_decode(direct_tokens[:3])
    stop = direct_text[len(direct_text) // 2 :][:2] if len(direct_text) > 4 else None
    if stop:
        (cut,) = lm.generate_until(_instances("generate_until", [(context, {"until": [stop], "max_gen_toks": 8})]), disable_tqdm=True)
        assert cut == direct_text.split(stop)[0]


def test_model_argument_errors(tiny_bundle, tmp_path):
    with pytest.raises(EvaluationError, match="bundle=<folder"):
        QuantkitLM()
    with pytest.raises(BundleError, match="no such bundle folder"):
        QuantkitLM(bundle=str(tmp_path / "missing"))
    with pytest.raises(EvaluationError, match="max_length: got 100000, expected 1 to 512"):
        QuantkitLM(bundle=str(tiny_bundle), max_length=100_000)
    with pytest.raises(EvaluationError, match="shadow: got 'maybe'"):
        QuantkitLM(bundle=str(tiny_bundle), shadow="maybe")
    with pytest.raises(EvaluationError, match="pack_tokens: got -1"):
        QuantkitLM(bundle=str(tiny_bundle), pack_tokens=-1)
    assert QuantkitLM.create_from_arg_string(f"bundle={tiny_bundle},shadow=False", {"batch_size": 4, "device": "cpu"}).model.shadow is False


def test_packed_scoring_equals_one_prefill_per_input(tiny_bundle):
    """Multiple-choice-like requests (a context, several continuations) and unrelated ones:
    the packed, prefix-shared scores are the unpacked ones exactly (pack_tokens=0)."""
    contexts = [TEXT[:70], TEXT[40:130], "Time codes"]
    continuations = [" frequency signal", " which is their estimate", " of TAI.", " UTC"]
    requests = [(c, k) for c in contexts for k in continuations] + [("", TEXT[:50])]
    packed = QuantkitLM(bundle=str(tiny_bundle), pack_tokens=40)  # several packed prefills
    unpacked = QuantkitLM(bundle=str(tiny_bundle), pack_tokens=0)
    got = packed.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    assert got == unpacked.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    rolling = [(TEXT,), (TEXT[30:],)]
    assert packed.loglikelihood_rolling(_instances("loglikelihood_rolling", rolling), disable_tqdm=True) == unpacked.loglikelihood_rolling(
        _instances("loglikelihood_rolling", rolling), disable_tqdm=True
    )
