"""Settings of a calibration run: a validated dataclass that round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from quantkit.calibration.presets import DEFAULT_PRESET, PRESETS
from quantkit.outlier_shadow.config import ShadowConfig
from quantkit.precision.plan import PRECISION_MODES
from quantkit.runtime.bundle import DEFAULT_CHUNK_SIZE, GRAPH_KINDS
from quantkit.settings import from_checked_dict
from quantkit.transforms.rotation import ROTATIONS
from quantkit.weights.quantize import WEIGHT_BLOCK_OFFSETS, WEIGHT_ROUNDINGS

__all__ = ["CalibrationConfig", "CONFIG_VERSION", "WEIGHT_MODES"]

WEIGHT_MODES = ("4", "8", "auto")

CONFIG_VERSION = 1
# The shadow settings are ShadowConfig's, flattened into CLI flags: one source of defaults.
_SHADOW_DEFAULTS = ShadowConfig()


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``quantkit calibrate`` does; every field is a CLI flag of the same name.

    Defaults, and why:

    * ``num_sequences=32``, ``seq_len=512`` (16,384 tokens): the p99.99 of a 576-wide
      activation then rests on ~940 values beyond it, and the extreme channels of
      SmolLM2 fire on most tokens, so max and quantiles are stable (the run prints them);
      512 tokens cover two 256-token prefill chunks, so positions past the first chunk
      are seen. Time grows linearly with the token count.
    * ``outlier_quantile=0.99`` (``ShadowConfig.percentile``): values above the p99 of |x|
      are the outliers the shadow path takes (arXiv 2407.05858 §3.3).
    * ``aimet_num_sequences=8``: AIMET's min/max encodings of the naive baseline
      converge within a few sequences, and its simulated forward is ~7 s per sequence.
    * ``eval_num_sequences=8`` × 512 tokens of the validation split: the windows every
      precision and placement decision is measured on; the next 8 × 512 tokens of the
      split confirm the chosen arithmetic on text no decision saw (the summary's
      confirmation).
    * ``scale_rule`` … ``output_outlier_ratio``: the shadow outlier, weight and output-side shadow settings (see
      ``quantkit.outlier_shadow.ShadowConfig``), percentile = ``outlier_quantile``.
    * ``accuracy_budget=0.01``: the validation perplexity of the deployed arithmetic
      must stay within 1% of FP; graphs are promoted to A16, then blocks move to the CPU
      in FP, until it does (paper §3.4).
    * ``precision="w8a8-mixed"``: the preset this config started from
      (``calibration.presets``: ``w8a8-mixed``, ``w8a16``, ``w4a16``); the fields below
      are its values unless a flag overrode them. The defaults of this class are the
      ``w8a8-mixed`` preset.
    * ``activation_bits="auto"``: each NPU graph's input A8 (int8 × int8 MACs on the HTP)
      wherever the accuracy budget holds, A16 where it must (``precision.search``: every
      graph at A8 first, held against the budget by the upper confidence bound over the
      validation windows; per-graph KL and promotions only when that is over). ``"8"``
      puts every graph at A8, ``"16"`` every graph at A16 (W8A16).
    * ``sink_tokens=1``: the first position of every sequence runs whole in FP on the CPU
      (``ShadowConfig.sink_tokens``): on SmolLM2 it carries the massive activations (the
      residual stream reaches 24,926 there, ≤ 1,150 elsewhere), and the NPU's ranges are
      recorded without it. 0 keeps it on the NPU (the ``w8a16`` and ``w4a16`` presets:
      16-bit ranges hold it).
    * ``weight_bits="8"``: INT8 weights per output channel (round to nearest: its error is
      negligible, W8A16 +0.07% word perplexity on SmolLM2). ``"4"``: every 16-bit graph
      gets 4-bit weights (the HTP runs 4-bit weights only with 16-bit activations; A8
      graphs keep INT8), ``weight_block_size`` inputs per LPBQ block (0: per output
      channel), rounded by ``weight_rounding`` (``"gptq"`` against the calibration
      Hessians of the clipped inputs, or ``"nearest"``). ``"auto"``: start from that and
      give INT8 weights back to the graphs that buy the most accuracy per weight byte
      until the deployed arithmetic is within ``accuracy_budget`` (before block placement).
    * ``weight_block_offsets="none"``: LPBQ is symmetric. ``"int8"`` / ``"int4"`` add an
      offset per block, int8 or int4 codes with a float32 scale per row (``runtime.qdq``;
      asymmetric blocks, a second small MatMul on the HTP), on the graph kinds of
      ``weight_block_offset_graphs`` (comma-separated, from qkv, o, gate_up, down). On
      SmolLM2, whose weights were asymmetric 4-bit blocks (Q4_1) before dequantization,
      the all-NPU W4A16 bundles measure (word perplexity on ``quantkit_wikitext`` through
      the runtime, NPU weight bytes against INT8's): no offsets +12.2%, 53.4%; int8 on
      every kind +1.25%, 57.1% (before the block means had their own grid); int4 on every
      kind +3.37%, 55.5%; int4 on gate_up and down +6.04%, 55.0% (README). None is
      within +3% and 55% at once, so offsets stay off by default.
    * ``weight_bytes_budget=0``: off. A fraction f in (0, 1], with ``weight_bits="4"`` and
      block offsets: the NPU weights may take at most f × their INT8 bytes, and the
      offsets go to the eligible graphs that lower the KL divergence from FP most per
      byte within that (``precision.offset_budget``); the others stay symmetric. SmolLM2
      at 0.55 with int4 offsets: 87 of 120 graphs get them, +2.97% word perplexity at
      54.9996% of the INT8 bytes (README).
    * ``prune_fraction=0.5`` applies to ``activation_bits="16"`` only: a 16-bit range
      absorbs the outliers of the least important half of the layers (W8A16 −0.1% on
      SmolLM2 with them pruned). With ``"8"`` or ``"auto"`` every site keeps its shadow path,
      because an INT8 range cannot: SmolLM2 all-A8 validation +2.0% with half the sites
      pruned, +0.8% with none (word perplexity through the runtime +3.0% → +1.4%).
    * ``sensitivity_num_sequences=4`` × 256 tokens: per-block sensitivity runs the model
      once per block (30× for SmolLM2); a ranking needs less text than a perplexity.
    * ``search_realizations=3``: with ``activation_bits="auto"`` each point the search
      measures is the validation perplexity over this many rounding realizations
      (input embeddings × (1 + 1e-6·noise), ``sensitivity.realizations``). At A8 one
      perplexity is one draw of the rounding: on SmolLM2 the all-A8 point measured 21.08
      unperturbed and 21.12 / 21.10 / 21.20 perturbed, and exported search points 8 and 20
      graphs apart measured +0.65% and +1.18% word perplexity through the runtime — the
      more A16 one worse. A single draw under budget is luck; the mean is what an executor
      can expect. 1 measures each point once (3× faster search).
    * ``rotation="none"``: ``"hadamard"`` fuses a randomized Hadamard rotation of the
      residual stream into the weights before statistics (QuaRot R1,
      ``quantkit.transforms``); the function is unchanged and the q/k/v and gate/up
      inputs lose their massive channels, but on SmolLM2 the weights' rounding error
      then meets the energy the norms had nulled, and it does not pay (README).
    * ``bundle_chunk_size=256`` (the export's default): the summary's ``quantkit``
      perplexity is the calibration exported at this chunk size and run through the
      runtime on the validation tokens (``calibration.bundle_perplexity``) — what ships,
      not the search's simulation, which is a different rounding draw at A8.
    """

    precision: str = DEFAULT_PRESET
    model: str = "smollm2-135m"
    data: str = "enwiki"
    num_sequences: int = 32
    seq_len: int = 512
    batch_size: int = 4
    outlier_quantile: float = _SHADOW_DEFAULTS.percentile
    aimet_num_sequences: int = 8
    aimet_config: str = "default"
    eval_num_sequences: int = 8
    eval_seq_len: int = 512
    scale_rule: str = _SHADOW_DEFAULTS.scale_rule
    k: float = _SHADOW_DEFAULTS.k
    hot_coverage: float = _SHADOW_DEFAULTS.hot_coverage
    max_resident_fraction: float = _SHADOW_DEFAULTS.max_resident_fraction
    prune_fraction: float = _SHADOW_DEFAULTS.prune_fraction
    pruned_scale_rule: str = _SHADOW_DEFAULTS.pruned_scale_rule
    weight_scale_rule: str = _SHADOW_DEFAULTS.weight_scale_rule
    max_output_channels: int = _SHADOW_DEFAULTS.max_output_channels
    output_outlier_ratio: float = _SHADOW_DEFAULTS.output_outlier_ratio
    accuracy_budget: float = 0.01
    activation_bits: str = "auto"
    weight_bits: str = "8"
    weight_block_size: int = 32
    weight_rounding: str = "gptq"
    weight_block_offsets: str = "none"
    weight_block_offset_graphs: str = "qkv,o,gate_up,down"
    weight_bytes_budget: float = 0.0
    sensitivity_num_sequences: int = 4
    sensitivity_seq_len: int = 256
    sink_tokens: int = 1
    rotation: str = "none"
    search_realizations: int = 3
    bundle_chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str = "cpu"
    version: int = CONFIG_VERSION

    @classmethod
    def preset(cls, precision: str = DEFAULT_PRESET, **overrides) -> "CalibrationConfig":
        """The settings of the ``precision`` preset (``calibration.presets``), with
        ``overrides`` replacing single settings.

        >>> CalibrationConfig.preset("w8a16").activation_bits
        '16'
        >>> CalibrationConfig.preset("w8a16", activation_bits="auto").activation_bits
        'auto'
        """
        if precision not in PRESETS:
            raise ValueError(f"precision: got {precision!r}, expected one of {', '.join(PRESETS)}")
        return cls(precision=precision, **{**PRESETS[precision], **overrides})

    @property
    def offset_graph_kinds(self) -> set[str]:
        """The graph kinds whose LPBQ weights get ``weight_block_offsets``."""
        return {kind.strip() for kind in self.weight_block_offset_graphs.split(",") if kind.strip()}

    def __post_init__(self) -> None:
        if self.precision not in PRESETS:
            raise ValueError(f"precision: got {self.precision!r}, expected one of {', '.join(PRESETS)}")
        for name in ("num_sequences", "batch_size", "aimet_num_sequences", "eval_num_sequences", "sensitivity_num_sequences", "search_realizations", "bundle_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: got {value!r}, expected a positive integer")
        for name in ("seq_len", "eval_seq_len", "sensitivity_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name}: got {value!r}, expected an integer ≥ 2 (tokens per sequence)")
        if not 0.5 < self.outlier_quantile < 1.0:
            raise ValueError(f"outlier_quantile: got {self.outlier_quantile!r}, expected a value in (0.5, 1), e.g. 0.999")
        if self.aimet_num_sequences > self.num_sequences:
            raise ValueError(
                f"aimet_num_sequences: got {self.aimet_num_sequences}, expected at most num_sequences ({self.num_sequences}); "
                "AIMET calibrates on a subset of the calibration sequences"
            )
        if self.sensitivity_num_sequences > self.eval_num_sequences or self.sensitivity_seq_len > self.eval_seq_len:
            raise ValueError(
                f"sensitivity sequences ({self.sensitivity_num_sequences} × {self.sensitivity_seq_len}) must fit in the "
                f"evaluation sequences ({self.eval_num_sequences} × {self.eval_seq_len}) they are cut from"
            )
        if not 0.0 <= self.accuracy_budget < 1.0:
            raise ValueError(f"accuracy_budget: got {self.accuracy_budget!r}, expected a relative perplexity increase in [0, 1), e.g. 0.01")
        if self.activation_bits not in PRECISION_MODES:
            raise ValueError(f"activation_bits: got {self.activation_bits!r}, expected one of {', '.join(PRECISION_MODES)}")
        if self.weight_bits not in WEIGHT_MODES:
            raise ValueError(f"weight_bits: got {self.weight_bits!r}, expected one of {', '.join(WEIGHT_MODES)}")
        if self.weight_bits != "8" and self.activation_bits == "8":
            raise ValueError(f"weight_bits {self.weight_bits} with activation_bits 8: the HTP runs 4-bit weights only with 16-bit activations; use --activation-bits 16 or auto (A8 graphs keep INT8 weights)")
        if not isinstance(self.weight_block_size, int) or self.weight_block_size < 0 or (self.weight_block_size and self.weight_block_size % 16):
            raise ValueError(f"weight_block_size: got {self.weight_block_size!r}, expected 0 (per output channel) or a multiple of 16 dividing the input features, e.g. 64")
        if self.weight_block_offsets not in WEIGHT_BLOCK_OFFSETS:
            raise ValueError(f"weight_block_offsets: got {self.weight_block_offsets!r}, expected one of {', '.join(WEIGHT_BLOCK_OFFSETS)}")
        if self.weight_block_offsets != "none" and (self.weight_bits == "8" or not self.weight_block_size):
            raise ValueError("weight_block_offsets: block offsets belong to 4-bit LPBQ weights; use --weight-bits 4 (or auto) with --weight-block-size N > 0")
        if not isinstance(self.weight_bytes_budget, (int, float)) or not 0.0 <= self.weight_bytes_budget <= 1.0:
            raise ValueError(f"weight_bytes_budget: got {self.weight_bytes_budget!r}, expected 0 (off) or a fraction of the INT8 weight bytes in (0, 1], e.g. 0.55")
        if self.weight_bytes_budget and (self.weight_bits != "4" or self.weight_block_offsets == "none"):
            raise ValueError("weight_bytes_budget: the budget chooses which graphs get block offsets; use it with --weight-bits 4 and --weight-block-offsets int8 or int4")
        kinds = self.offset_graph_kinds
        unknown = sorted(kinds - set(GRAPH_KINDS.values()))
        if unknown or not kinds:
            raise ValueError(f"weight_block_offset_graphs: got {self.weight_block_offset_graphs!r}, expected a comma-separated list of graph kinds from {', '.join(dict.fromkeys(GRAPH_KINDS.values()))}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation: got {self.rotation!r}, expected one of {', '.join(ROTATIONS)}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(f"weight_rounding: got {self.weight_rounding!r}, expected one of {', '.join(WEIGHT_ROUNDINGS)}")
        self.shadow_config()  # validates the shadow settings
        if self.version != CONFIG_VERSION:
            raise ValueError(f"version: got {self.version!r}, expected {CONFIG_VERSION} (this quantkit writes and reads version {CONFIG_VERSION})")

    def shadow_config(self) -> ShadowConfig:
        return ShadowConfig(
            scale_rule=self.scale_rule,
            k=self.k,
            percentile=self.outlier_quantile,
            hot_coverage=self.hot_coverage,
            max_resident_fraction=self.max_resident_fraction,
            prune_fraction=self.prune_fraction if self.activation_bits == "16" else 0.0,  # see the class docstring
            pruned_scale_rule=self.pruned_scale_rule,
            weight_scale_rule=self.weight_scale_rule,
            max_output_channels=self.max_output_channels,
            output_outlier_ratio=self.output_outlier_ratio,
            sink_tokens=self.sink_tokens,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CalibrationConfig":
        if "sink_tokens" not in values:  # written before sink rows existed: calibrated without them
            values = {**values, "sink_tokens": 0}
        return from_checked_dict(cls, values, "calibration")

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "CalibrationConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
