"""``quantkit profile BUNDLE``: what each NPU graph of a bundle costs on the Hexagon HTP,
counted by the QNN HTP backend's own profiler, at the bundle's precision and with every
graph at A16 (W8A16), side by side.

Each graph is compiled for the target (``soc_model``, ``htp_arch``) with the provider
option ``profiling_level=detailed`` and run once on one chunk; the profiler's
"Accelerator (execute) time (cycles)" is its cost. The A16 twin of an A8 graph is the
same graph with 16-bit activation zero points and scales (its weights untouched): what
``--precision w8a16`` would ship.

On a workstation the HTP is emulated on x86: the cycles are the emulator's count for the
target, a relative cost (A8 against A16, graph against graph), not a device measurement.
They also move with the host's load (one gate_up graph, four runs beside a busy CPU:
93–148 M cycles), so each graph runs ``repeats`` times and keeps its least count; profile
on a quiet machine.
The projection turns one chunk's cycles over all NPU graphs into prefill time at an
assumed HTP clock, which every printed figure states; the CPU side (attention, norms,
the shadow path) is not in it.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quantkit.errors import QuantkitError
from quantkit.runtime.bundle import graph_kind, load_manifest

__all__ = ["DEFAULT_HTP_CLOCK_GHZ", "GraphCost", "HtpProfile", "a16_twin", "profile_bundle", "executed_cycles"]

# The projection's assumed HTP clock. Qualcomm does not publish the Hexagon NPU's clock;
# 1 GHz is a round figure of the order of Hexagon DSP clocks, stated with every projection
# so that it can be rescaled (time ∝ 1 / clock).
DEFAULT_HTP_CLOCK_GHZ = 1.0
_CYCLES_EVENT = "Accelerator (execute) time (cycles)"
_INT16_MAX, _INT8_MAX = 32767, 127


@dataclass
class GraphCost:
    name: str
    kind: str
    block: int
    activation_bits: int
    cycles: int  # at the bundle's precision
    a16_cycles: int  # the same graph with 16-bit activations


@dataclass
class HtpProfile:
    soc_model: int
    htp_arch: int | None
    chunk_size: int
    clock_ghz: float
    repeats: int = 1  # executions per graph; the least count is kept
    graphs: list[GraphCost] = field(default_factory=list)

    def chunk_cycles(self, a16: bool = False) -> int:
        """One chunk through every NPU graph of the bundle (or of its all-A16 twin)."""
        return sum(g.a16_cycles if a16 else g.cycles for g in self.graphs)

    def prefill_tokens_per_s(self, a16: bool = False) -> float:
        """Projected NPU prefill throughput: chunk tokens per chunk time at the assumed clock."""
        return self.chunk_size / (self.chunk_cycles(a16) / (self.clock_ghz * 1e9))

    def to_dict(self) -> dict:
        return {
            **{k: v for k, v in asdict(self).items() if k != "graphs"},
            "chunk_cycles": self.chunk_cycles(),
            "chunk_cycles_a16": self.chunk_cycles(a16=True),
            "prefill_tokens_per_s": self.prefill_tokens_per_s(),
            "prefill_tokens_per_s_a16": self.prefill_tokens_per_s(a16=True),
            "graphs": [asdict(g) for g in self.graphs],
        }

    def summary(self) -> str:
        target = f"soc_model {self.soc_model}" + (f", htp_arch {self.htp_arch}" if self.htp_arch else "")
        ratio = self.chunk_cycles(a16=True) / self.chunk_cycles()
        return (
            f"{len(self.graphs)} NPU graphs, chunk {self.chunk_size}, QNN HTP emulator ({target}):\n"
            f"  this bundle:     {self.chunk_cycles() / 1e6:10.1f} M cycles per chunk → {self.prefill_tokens_per_s():8.0f} prefill tokens/s\n"
            f"  every graph A16: {self.chunk_cycles(a16=True) / 1e6:10.1f} M cycles per chunk → {self.prefill_tokens_per_s(a16=True):8.0f} prefill tokens/s "
            f"({ratio:.2f}× the cycles)\n"
            f"  tokens/s at an assumed HTP clock of {self.clock_ghz:g} GHz, NPU graphs only; least of {self.repeats} runs per graph "
            "(emulator cycles: a relative cost that moves with the host's load, not a device measurement)"
        )


def executed_cycles(profile_csv: Path) -> int:
    """The least "Accelerator (execute) time (cycles)" over the executions in the QNN
    profiler's CSV (columns: Msg Timestamp, Message, Time, Unit of Measurement, Timing
    Source, Event Level, Event Identifier)."""
    rows = [row for row in csv.DictReader(profile_csv.read_text().splitlines()) if (row.get("Event Identifier") or "").strip() == _CYCLES_EVENT]
    if not rows:
        raise QuantkitError(f"{profile_csv}: the QNN profiler wrote no {_CYCLES_EVENT!r} event")
    return min(int(row["Time"]) for row in rows)


def a16_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with 16-bit activations: every QuantizeLinear's int8 zero point int16, its
    scale × 127 / 32767 (the same range on the finer grid); weights stay as they are."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    initializers = {init.name: init for init in twin.graph.initializer}
    done: set[str] = set()
    for node in twin.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] in done:
            continue
        zero_point, scale = initializers.get(node.input[2]), initializers.get(node.input[1])
        if zero_point is None or zero_point.data_type != onnx.TensorProto.INT8:
            continue
        zero_point.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero_point).astype(np.int16), zero_point.name))
        if scale is not None and scale.name not in done:
            scale.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(scale) * (_INT8_MAX / _INT16_MAX)).astype(np.float32), scale.name))
            done.add(scale.name)
        done.add(node.input[2])
    return twin


def _cycles(path: Path, soc_model: int, htp_arch: int | None, scratch: Path, repeats: int) -> int:
    from quantkit.runtime.sessions import qnn_htp_session, qnn_target_options

    report = scratch / f"{path.stem}.csv"
    options = {"profiling_level": "detailed", "profiling_file_path": str(report), **qnn_target_options(soc_model, htp_arch)}
    session = qnn_htp_session(path, options)
    shape = session.get_inputs()[0].shape
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(repeats):
        session.run(None, feed)
    del session  # the profiler writes its file when ONNX Runtime releases the graph
    return executed_cycles(report)


def profile_bundle(
    folder: str | Path,
    soc_model: int = 60,
    htp_arch: int | None = None,
    clock_ghz: float = DEFAULT_HTP_CLOCK_GHZ,
    repeats: int = 3,
    progress: bool = True,
) -> HtpProfile:
    """Every NPU graph of the bundle at ``folder`` and its A16 twin, profiled on the QNN HTP
    backend: the least cycles over ``repeats`` executions of each (module docstring)."""
    from tqdm import tqdm

    folder = Path(folder)
    manifest = load_manifest(folder)
    if not math.isfinite(clock_ghz) or clock_ghz <= 0:
        raise QuantkitError(f"--htp-clock-ghz: got {clock_ghz}, expected a positive clock in GHz")
    if repeats < 1:
        raise QuantkitError(f"--repeats: got {repeats}, expected at least 1")
    profile = HtpProfile(soc_model, htp_arch, manifest["chunk_size"], clock_ghz, repeats)
    with tempfile.TemporaryDirectory(prefix="quantkit-profile-") as scratch:
        scratch = Path(scratch)
        for entry in tqdm(manifest["graphs"], desc="QNN HTP profile", unit="graph", disable=not progress):
            path = folder / entry["file"]
            cycles = _cycles(path, soc_model, htp_arch, scratch, repeats)
            if entry["activation_bits"] == 16:
                a16_cycles = cycles
            else:
                twin = scratch / f"{path.stem}.a16.onnx"
                onnx.save(a16_twin(onnx.load(str(path))), str(twin))
                a16_cycles = _cycles(twin, soc_model, htp_arch, scratch, repeats)
            profile.graphs.append(GraphCost(entry["name"], graph_kind(entry["linears"][0]), entry["block"], entry["activation_bits"], cycles, a16_cycles))
    return profile


def write_profile(profile: HtpProfile, out: Path) -> Path:
    """OUT/profile.json; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profile.json"
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path
