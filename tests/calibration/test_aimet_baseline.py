import json

import pytest
import torch
from quantkit.eval.perplexity import perplexity

from quantkit.calibration.aimet_baseline import build_quantsim, build_w8a8_quantsim, compute_w8a8_encodings, quantsim_encodings_1_0_0
from quantkit.calibration.collect import collect_activation_statistics
from quantkit.models.architecture import find_decoder_layout
from tests.conftest import TINY_VOCAB, tiny_model


@pytest.fixture(scope="module")
def calibrated_sim():
    model = tiny_model("llama", planted_outliers=True)
    sequences = torch.randint(0, TINY_VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    sim = build_w8a8_quantsim(model, sequences[:1])
    compute_w8a8_encodings(sim, sequences, progress=False)
    return model, sim, sequences


def _enabled_quantizers(sim):
    count = 0
    for _, qmodule in sim.named_qmodules():
        count += sum(q is not None for q in qmodule.input_quantizers)
        count += sum(q is not None for q in qmodule.output_quantizers)
        count += sum(q is not None for q in qmodule.param_quantizers.values())
    return count


def test_encodings_have_the_1_0_0_layout_with_one_entry_per_quantized_tensor(calibrated_sim):
    model, sim, _ = calibrated_sim
    encodings = json.loads(json.dumps(quantsim_encodings_1_0_0(sim)))  # JSON-serialisable
    assert encodings["version"] == "1.0.0"
    entries = encodings["activation_encodings"] + encodings["param_encodings"]
    assert len(entries) == _enabled_quantizers(sim)
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names))
    for entry in entries:
        assert set(entry) >= {"name", "dtype", "bw", "is_sym", "scale", "offset", "enc_type"}
        assert entry["dtype"] == "INT" and entry["bw"] == 8
        assert len(entry["scale"]) == len(entry["offset"])
    weights = {e["name"]: e for e in encodings["param_encodings"]}
    q_proj = weights["model.layers.0.self_attn.q_proj.weight"]
    assert q_proj["enc_type"] == "PER_CHANNEL" and q_proj["is_sym"] is True
    assert len(q_proj["scale"]) == model.config.hidden_size  # one scale per output channel
    assert all(e["enc_type"] == "PER_TENSOR" for e in encodings["activation_encodings"])


def test_aimet_ranges_agree_with_quantkit_statistics(calibrated_sim):
    """AIMET's min/max encodings of a Linear output cover the range quantkit measured."""
    model, sim, sequences = calibrated_sim
    stats = collect_activation_statistics(find_decoder_layout(model), sequences, progress=False)
    encodings = {e["name"]: e for e in quantsim_encodings_1_0_0(sim)["activation_encodings"]}
    for name in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"):
        entry = encodings[f"{name}.output.0"]
        scale, offset = entry["scale"][0], entry["offset"][0]
        low, high = scale * offset, scale * (offset + 255)
        measured = stats[f"{name}:output"].absmax.item()
        assert max(-low, high) == pytest.approx(measured, rel=0.05)


def test_w8a8_simulation_is_worse_than_fp_but_finite(calibrated_sim):
    model, sim, sequences = calibrated_sim
    fp = perplexity(lambda ids: model(input_ids=ids, use_cache=False).logits, sequences, progress=False)
    quantized = perplexity(sim.model, sequences, progress=False)
    assert torch.isfinite(torch.tensor(quantized))
    assert quantized != fp


def test_quantizer_state_round_trip_rebuilds_the_same_baseline(calibrated_sim, tmp_path):
    from quantkit.calibration.aimet_baseline import load_quantizer_state, save_quantizer_state

    model, sim, sequences = calibrated_sim
    save_quantizer_state(sim, tmp_path / "state.safetensors")
    rebuilt = build_w8a8_quantsim(model, sequences[:1])
    load_quantizer_state(rebuilt, tmp_path / "state.safetensors")
    with torch.no_grad():
        assert torch.equal(rebuilt.model(sequences), sim.model(sequences))


def test_w8a16_quantsim_has_16_bit_activations_and_int8_weights(calibrated_sim):
    """The W8A16 baseline: every activation quantizer at 16 bits, weights still INT8, and
    on planted outliers far closer to FP than W8A8 (its per-tensor ranges keep 256× the steps)."""
    model, w8a8, sequences = calibrated_sim
    sim = build_quantsim(model, sequences[:1], activation_bits=16)
    compute_w8a8_encodings(sim, sequences, progress=False)
    activations = [q for _, m in sim.named_qmodules() for q in (*m.input_quantizers, *m.output_quantizers) if q is not None]
    params = [q for _, m in sim.named_qmodules() for q in m.param_quantizers.values() if q is not None]
    assert activations and {q.bitwidth for q in activations} == {16}
    assert params and {q.bitwidth for q in params} == {8}
    fp = perplexity(lambda ids: model(input_ids=ids, use_cache=False).logits, sequences, progress=False)
    a8, a16 = perplexity(w8a8.model, sequences, progress=False), perplexity(sim.model, sequences, progress=False)
    assert abs(a16 / fp - 1) < abs(a8 / fp - 1)


def test_quantsim_rejects_an_activation_width_aimet_flow_does_not_offer():
    with pytest.raises(ValueError, match=r"got 4, expected one of \(8, 16\)"):
        build_quantsim(tiny_model("llama"), torch.zeros(1, 4, dtype=torch.long), activation_bits=4)
