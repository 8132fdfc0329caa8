"""Settings of a calibration run: validated dataclasses, grouped by what they decide, that
round-trip to one versioned JSON/YAML structure.

Every setting is a CLI flag of ``quantkit calibrate`` of the same name (``num_sequences`` →
``--num-sequences``) and a key of the same name in its section of ``config.json`` and of a
recipe file (``--recipe``)::

    version: 2
    precision: w8a8-mixed        # the preset the settings started from
    model: smollm2-135m
    data: enwiki
    rotation: none
    device: cpu
    statistics: {num_sequences: 32, seq_len: 512, batch_size: 4}
    outliers: {outlier_quantile: 0.99, scale_rule: paper, sink_tokens: 1, ...}
    search: {activation_bits: auto, accuracy_budget: 0.01, ...}
    weights: {weight_bits: "8", weight_block_size: 32, ...}
    evaluation: {eval_num_sequences: 8, eval_seq_len: 512, bundle_chunk_size: 256}
    aimet: {aimet_num_sequences: 8, aimet_config: default}

Version 1 was the same settings in one flat mapping; ``from_dict`` still reads it.

The (de)serialiser is the few generic functions at the end of this file, driven by
``dataclasses.fields``: pydantic would do the same but is not a dependency of quantkit, and
the configs are frozen dataclasses like every other settings class here (``ShadowConfig``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantkit.calibration.presets import DEFAULT_PRESET, PRESETS
from quantkit.errors import ConfigError
from quantkit.outlier_shadow.config import PRUNED_SCALE_RULES, SCALE_RULES, ShadowConfig
from quantkit.precision.plan import PRECISION_MODES
from quantkit.quant_primitives import WEIGHT_SCALE_RULES
from quantkit.runtime.bundle import DEFAULT_CHUNK_SIZE, GRAPH_KINDS
from quantkit.transforms.rotation import ROTATIONS
from quantkit.weights.quantize import WEIGHT_BLOCK_OFFSETS, WEIGHT_ROUNDINGS

__all__ = [
    "CalibrationConfig",
    "StatisticsConfig",
    "OutlierConfig",
    "SearchConfig",
    "WeightConfig",
    "EvaluationConfig",
    "AimetConfig",
    "CONFIG_VERSION",
    "WEIGHT_MODES",
    "SECTIONS",
    "SETTING_NAMES",
    "setting_field",
    "check_setting",
    "load_recipe",
    "read_settings",
]

WEIGHT_MODES = ("4", "8", "auto")

CONFIG_VERSION = 2  # 1: every setting in one flat mapping (still read)
# The outlier settings are ShadowConfig's under their flag names: one source of defaults.
_SHADOW_DEFAULTS = ShadowConfig()


# --- checks of single values: each returns what was expected, or None when the value is fine.
# A setting's check runs in its section's __post_init__ and where the CLI parses its flag.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "a positive integer"


def _non_negative_int(what: str) -> Callable[[Any], str | None]:
    return lambda value: None if _is_int(value) and value >= 0 else f"an integer ≥ 0 ({what})"


def _tokens(value: Any) -> str | None:
    return None if _is_int(value) and value >= 2 else "an integer ≥ 2 (tokens per sequence)"


def _number_in(low: float, high: float, expected: str, *, low_open: bool = False, high_open: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not _is_number(value):
            return expected
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else expected

    return check


def _at_least(low: float, expected: str) -> Callable[[Any], str | None]:
    return lambda value: None if _is_number(value) and value >= low else expected


def _one_of(names: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in names else f"one of {', '.join(names)}"


def _non_empty(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


def _block_size(value: Any) -> str | None:
    ok = _is_int(value) and value >= 0 and value % 16 == 0
    return None if ok else "0 (per output channel) or a multiple of 16 dividing the input features, e.g. 64"


_KINDS = tuple(dict.fromkeys(GRAPH_KINDS.values()))


def _graph_kinds(value: Any) -> str | None:
    kinds = _kind_set(value) if isinstance(value, str) else set()
    ok = bool(kinds) and kinds <= set(_KINDS)
    return None if ok else f"a comma-separated list of graph kinds from {', '.join(_KINDS)}"


def _kind_set(text: str) -> set[str]:
    return {kind.strip() for kind in text.split(",") if kind.strip()}


def setting_field(default: Any, help: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field that is a user setting: ``help`` is its CLI help and docs sentence,
    ``check`` its single-value check."""
    return field(default=default, metadata={"help": help, "check": check})


def check_setting(item: dataclasses.Field, value: Any) -> str | None:
    """What ``item`` expects, when ``value`` fails its check; None when it passes."""
    check = item.metadata.get("check")
    return check(value) if check else None


def _check_fields(config: Any) -> None:
    for item in dataclasses.fields(config):
        expected = check_setting(item, getattr(config, item.name))
        if expected:
            raise ConfigError(f"{item.name}: got {getattr(config, item.name)!r}, expected {expected}")


# --- the sections


@dataclass(frozen=True)
class StatisticsConfig:
    """The calibration text the activation statistics are collected on.

    * ``num_sequences=32``, ``seq_len=512`` (16,384 tokens): the p99.99 of a 576-wide
      activation then rests on ~940 values beyond it, and the extreme channels of
      SmolLM2 fire on most tokens, so max and quantiles are stable (the run prints them);
      512 tokens cover two 256-token prefill chunks, so positions past the first chunk
      are seen. Time grows linearly with the token count.
    """

    num_sequences: int = setting_field(32, "calibration sequences the activation statistics are collected on", _positive_int)
    seq_len: int = setting_field(512, "tokens in each calibration sequence", _tokens)
    batch_size: int = setting_field(4, "calibration sequences run through the model at once (memory, not results)", _positive_int)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class OutlierConfig:
    """Shadow outlier execution (``quantkit.outlier_shadow.ShadowConfig``, arXiv 2407.05858
    §3.3), under the CLI's names: ``outlier_quantile`` is ``ShadowConfig.percentile``.

    * ``outlier_quantile=0.99``: values above the p99 of |x| are the outliers the shadow
      path takes.
    * ``prune_fraction=0.5`` applies to ``activation_bits="16"`` only: a 16-bit range
      absorbs the outliers of the least important half of the layers (W8A16 −0.1% on
      SmolLM2 with them pruned). With ``"8"`` or ``"auto"`` every site keeps its shadow path,
      because an INT8 range cannot: SmolLM2 all-A8 validation +2.0% with half the sites
      pruned, +0.8% with none (word perplexity through the runtime +3.0% → +1.4%).
    * ``sink_tokens=1``: the first position of every sequence runs whole in FP on the CPU
      (``ShadowConfig.sink_tokens``): on SmolLM2 it carries the massive activations (the
      residual stream reaches 24,926 there, ≤ 1,150 elsewhere), and the NPU's ranges are
      recorded without it. 0 keeps it on the NPU (the ``w8a16`` and ``w4a16`` presets:
      16-bit ranges hold it).
    """

    outlier_quantile: float = setting_field(
        _SHADOW_DEFAULTS.percentile,
        "quantile of |x| above which activation values are outliers taken by the FP shadow path",
        _number_in(0.5, 1.0, "a value in (0.5, 1), e.g. 0.999", low_open=True, high_open=True),
    )
    scale_rule: str = setting_field(
        _SHADOW_DEFAULTS.scale_rule,
        "how an input's INT8 range is chosen: 'paper' (max|x| unless it exceeds k × the quantile) or 'mse' (the error-minimising clip)",
        _one_of(SCALE_RULES),
    )
    k: float = setting_field(
        _SHADOW_DEFAULTS.k,
        "with scale_rule paper: max|x| sets the range when it is at most k × the outlier quantile",
        _at_least(1.0, "≥ 1 (max|x| is compared with k × the percentile)"),
    )
    hot_coverage: float = setting_field(
        _SHADOW_DEFAULTS.hot_coverage,
        "share of the calibration outliers the resident (hot) shadow channels must hold",
        _number_in(0.0, 1.0, "a share in (0, 1]", low_open=True),
    )
    max_resident_fraction: float = setting_field(
        _SHADOW_DEFAULTS.max_resident_fraction,
        "cap on the resident shadow weights as a share of the model's parameters (1 disables it)",
        _number_in(0.0, 1.0, "a share in [0, 1], e.g. 0.02"),
    )
    prune_fraction: float = setting_field(
        _SHADOW_DEFAULTS.prune_fraction,
        "share of the least important layers whose shadow path is dropped (with --activation-bits 16 only)",
        _number_in(0.0, 1.0, "a share in [0, 1]"),
    )
    pruned_scale_rule: str = setting_field(
        _SHADOW_DEFAULTS.pruned_scale_rule,
        "the range of a pruned layer: 'max' (nothing clipped), 'mse' (error-minimising clip) or 'clip' (drop the outliers)",
        _one_of(PRUNED_SCALE_RULES),
    )
    weight_scale_rule: str = setting_field(
        _SHADOW_DEFAULTS.weight_scale_rule,
        "INT8 per-channel weight scales: 'mse' (error-minimising clip per row) or 'max' (min/max)",
        _one_of(WEIGHT_SCALE_RULES),
    )
    max_output_channels: int = setting_field(
        _SHADOW_DEFAULTS.max_output_channels,
        "largest output channels per NPU Linear that may be computed in FP on the CPU (0 disables the output-side shadow)",
        _non_negative_int("0 disables the output-side shadow"),
    )
    output_outlier_ratio: float = setting_field(
        _SHADOW_DEFAULTS.output_outlier_ratio,
        "an output channel goes to the CPU when its max is above this ratio × the next largest",
        _at_least(1.0, "≥ 1 (a channel's max is compared with ratio × the next largest)"),
    )
    sink_tokens: int = setting_field(
        _SHADOW_DEFAULTS.sink_tokens,
        "first positions of every sequence run whole in FP on the CPU (the attention sink; 0 keeps them on the NPU)",
        _non_negative_int("0 disables the FP sink rows"),
    )

    def __post_init__(self) -> None:
        _check_fields(self)

    def shadow_config(self, activation_bits: str) -> ShadowConfig:
        """The ``ShadowConfig`` of these settings; the shadow path is pruned only for
        all-16-bit graphs (see the class docstring)."""
        return ShadowConfig(
            scale_rule=self.scale_rule,
            k=self.k,
            percentile=self.outlier_quantile,
            hot_coverage=self.hot_coverage,
            max_resident_fraction=self.max_resident_fraction,
            prune_fraction=self.prune_fraction if activation_bits == "16" else 0.0,
            pruned_scale_rule=self.pruned_scale_rule,
            weight_scale_rule=self.weight_scale_rule,
            max_output_channels=self.max_output_channels,
            output_outlier_ratio=self.output_outlier_ratio,
            sink_tokens=self.sink_tokens,
        )


@dataclass(frozen=True)
class SearchConfig:
    """The decisions measured against the accuracy budget: per-graph activation bits,
    then per-block placement (paper §3.4).

    * ``accuracy_budget=0.01``: the validation perplexity of the deployed arithmetic
      must stay within 1% of FP; graphs are promoted to A16, then blocks move to the CPU
      in FP, until it does.
    * ``activation_bits="auto"``: each NPU graph's input A8 (int8 × int8 MACs on the HTP)
      wherever the accuracy budget holds, A16 where it must (``precision.search``: every
      graph at A8 first, held against the budget by the upper confidence bound over the
      validation windows; per-graph KL and promotions only when that is over). ``"8"``
      puts every graph at A8, ``"16"`` every graph at A16 (W8A16).
    * ``search_realizations=1``: with ``activation_bits="auto"`` each point the search
      measures is the validation perplexity over this many rounding realizations
      (input embeddings × (1 + 1e-6·noise), ``sensitivity.realizations``). At A8 one
      perplexity is one draw of the rounding. With the sink rows in FP the draws agree
      closely (the default plan's three confirmation draws on SmolLM2: 24.85–24.87), far
      inside the interval over the validation windows that a point is decided on, so one
      draw per point is measured; the confirmation always measures three.
    * ``sensitivity_num_sequences=4`` × 256 tokens: per-block sensitivity runs the model
      once per block (30× for SmolLM2); a ranking needs less text than a perplexity.
    """

    accuracy_budget: float = setting_field(
        0.01,
        "largest relative increase of validation perplexity over FP the deployed arithmetic may have",
        _number_in(0.0, 1.0, "a relative perplexity increase in [0, 1), e.g. 0.01", high_open=True),
    )
    activation_bits: str = setting_field(
        "auto", "NPU graph input width: 'auto' (A8 wherever the budget holds, A16 elsewhere), '8' or '16' for every graph", _one_of(PRECISION_MODES)
    )
    search_realizations: int = setting_field(
        1, "rounding realizations averaged per point the activation-bits search measures (each one more model run per point)", _positive_int
    )
    sensitivity_num_sequences: int = setting_field(4, "validation sequences per-graph and per-block sensitivity are measured on", _positive_int)
    sensitivity_seq_len: int = setting_field(256, "tokens per sensitivity sequence (cut from the evaluation sequences)", _tokens)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class WeightConfig:
    """The NPU graphs' weights.

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
    """

    weight_bits: str = setting_field(
        "8",
        "NPU weight width: '8' (INT8 per channel), '4' (4-bit LPBQ on 16-bit graphs) or 'auto' (4-bit, INT8 back where the budget needs it)",
        _one_of(WEIGHT_MODES),
    )
    weight_block_size: int = setting_field(32, "inputs per 4-bit LPBQ block (0: one scale per output channel)", _block_size)
    weight_rounding: str = setting_field(
        "gptq", "how 4-bit weights are rounded: 'gptq' (against the calibration Hessians) or 'nearest'", _one_of(WEIGHT_ROUNDINGS)
    )
    weight_block_offsets: str = setting_field("none", "an offset per 4-bit block: 'none' (symmetric), 'int8' or 'int4' codes", _one_of(WEIGHT_BLOCK_OFFSETS))
    weight_block_offset_graphs: str = setting_field("qkv,o,gate_up,down", "comma-separated graph kinds whose 4-bit blocks may get offsets", _graph_kinds)
    weight_bytes_budget: float = setting_field(
        0.0,
        "with block offsets: the NPU weights' bytes as a fraction of INT8's that offsets may fill (0: off)",
        _number_in(0.0, 1.0, "0 (off) or a fraction of the INT8 weight bytes in (0, 1], e.g. 0.55"),
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.weight_block_offsets != "none" and (self.weight_bits == "8" or not self.weight_block_size):
            raise ConfigError("weight_block_offsets: block offsets belong to 4-bit LPBQ weights; use --weight-bits 4 (or auto) with --weight-block-size N > 0")
        if self.weight_bytes_budget and (self.weight_bits != "4" or self.weight_block_offsets == "none"):
            raise ConfigError(
                "weight_bytes_budget: the budget chooses which graphs get block offsets; use it with --weight-bits 4 and --weight-block-offsets int8 or int4"
            )

    @property
    def offset_graph_kinds(self) -> set[str]:
        """The graph kinds whose LPBQ weights get ``weight_block_offsets``."""
        return _kind_set(self.weight_block_offset_graphs)


@dataclass(frozen=True)
class EvaluationConfig:
    """The held-out text every decision and the summary are measured on.

    * ``eval_num_sequences=8`` × 512 tokens of the validation split: the windows every
      precision and placement decision is measured on; the next 8 × 512 tokens of the
      split confirm the chosen arithmetic on text no decision saw (the summary's
      confirmation).
    * ``bundle_chunk_size=256`` (the export's default): the summary's ``quantkit``
      perplexity is the calibration exported at this chunk size and run through the
      runtime on the validation tokens (``calibration.bundle_perplexity``) — what ships,
      not the search's simulation, which is a different rounding draw at A8.
    """

    eval_num_sequences: int = setting_field(8, "validation sequences decisions are measured on (as many again confirm them)", _positive_int)
    eval_seq_len: int = setting_field(512, "tokens in each validation sequence", _tokens)
    bundle_chunk_size: int = setting_field(DEFAULT_CHUNK_SIZE, "prefill chunk of the bundle whose runtime perplexity the summary reports", _positive_int)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class AimetConfig:
    """The AIMET QuantSim W8A8 baseline the summary compares with.

    * ``aimet_num_sequences=8``: AIMET's min/max encodings of the naive baseline
      converge within a few sequences, and its simulated forward is ~7 s per sequence.
    """

    aimet_num_sequences: int = setting_field(8, "calibration sequences AIMET's W8A8 baseline encodings are computed on", _positive_int)
    aimet_config: str = setting_field("default", "AIMET quantsim config: 'default' (per-channel weights) or a config JSON file", _non_empty)

    def __post_init__(self) -> None:
        _check_fields(self)


# section name in config.json and recipes → its class
SECTIONS: dict[str, type] = {
    "statistics": StatisticsConfig,
    "outliers": OutlierConfig,
    "search": SearchConfig,
    "weights": WeightConfig,
    "evaluation": EvaluationConfig,
    "aimet": AimetConfig,
}
_SECTION_OF = {item.name: section for section, cls in SECTIONS.items() for item in dataclasses.fields(cls)}


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``quantkit calibrate`` does: the model, the text, and one section per concern.

    * ``precision="w8a8-mixed"``: the preset this config started from
      (``calibration.presets``: ``w8a8-mixed``, ``w8a16``, ``w4a16``); the sections hold
      its values unless a flag or recipe overrode them. The defaults of every section are
      the ``w8a8-mixed`` preset.
    * ``rotation="none"``: ``"hadamard"`` fuses a randomized Hadamard rotation of the
      residual stream into the weights before statistics (QuaRot R1,
      ``quantkit.transforms``); the function is unchanged and the q/k/v and gate/up
      inputs lose their massive channels, but on SmolLM2 the weights' rounding error
      then meets the energy the norms had nulled, and it does not pay (README).

    >>> config = CalibrationConfig.preset("w8a16", num_sequences=8)
    >>> config.search.activation_bits, config.statistics.num_sequences
    ('16', 8)
    """

    precision: str = setting_field(DEFAULT_PRESET, f"precision preset the settings start from: {', '.join(PRESETS)}", _one_of(tuple(PRESETS)))
    model: str = setting_field("smollm2-135m", "Hugging Face folder, .gguf file, or built-in model name", _non_empty)
    data: str = setting_field("enwiki", "calibration text: built-in corpus 'enwiki', a .txt/.jsonl file, or a datasets name[:config]", _non_empty)
    rotation: str = setting_field("none", "rotation fused into the weights before statistics: 'none' or 'hadamard' (QuaRot R1)", _one_of(ROTATIONS))
    device: str = setting_field("cpu", "torch device the model runs on: cpu or cuda", _non_empty)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    weights: WeightConfig = field(default_factory=WeightConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    aimet: AimetConfig = field(default_factory=AimetConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected a {cls.__name__}")
        _check_fields(self)
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"version: got {self.version!r}, expected {CONFIG_VERSION} (this quantkit writes version {CONFIG_VERSION} and reads 1 and {CONFIG_VERSION})"
            )
        # checks across sections
        statistics, search, evaluation = self.statistics, self.search, self.evaluation
        if self.aimet.aimet_num_sequences > statistics.num_sequences:
            raise ConfigError(
                f"aimet_num_sequences: got {self.aimet.aimet_num_sequences}, expected at most num_sequences ({statistics.num_sequences}); "
                "AIMET calibrates on a subset of the calibration sequences"
            )
        if search.sensitivity_num_sequences > evaluation.eval_num_sequences or search.sensitivity_seq_len > evaluation.eval_seq_len:
            raise ConfigError(
                f"sensitivity sequences ({search.sensitivity_num_sequences} × {search.sensitivity_seq_len}) must fit in the "
                f"evaluation sequences ({evaluation.eval_num_sequences} × {evaluation.eval_seq_len}) they are cut from"
            )
        if self.weights.weight_bits != "8" and search.activation_bits == "8":
            raise ConfigError(
                f"weight_bits {self.weights.weight_bits} with activation_bits 8: the HTP runs 4-bit weights only with 16-bit activations; use --activation-bits 16 or auto (A8 graphs keep INT8 weights)"
            )
        self.shadow_config()  # the outlier settings as ShadowConfig validates them

    @classmethod
    def preset(cls, precision: str = DEFAULT_PRESET, **overrides: Any) -> CalibrationConfig:
        """The settings of the ``precision`` preset (``calibration.presets``), with
        ``overrides`` (settings by name, whatever their section) replacing single settings.

        >>> CalibrationConfig.preset("w8a16").search.activation_bits
        '16'
        >>> CalibrationConfig.preset("w8a16", activation_bits="auto").search.activation_bits
        'auto'
        """
        if precision not in PRESETS:
            raise ConfigError(f"precision: got {precision!r}, expected one of {', '.join(PRESETS)}")
        return cls._from_settings({**PRESETS[precision], **overrides, "precision": precision})

    def shadow_config(self) -> ShadowConfig:
        return self.outliers.shadow_config(self.search.activation_bits)

    def settings(self) -> dict[str, Any]:
        """Every setting by name (the CLI's flags), sections flattened; without ``version``."""
        top = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name not in SECTIONS and item.name != "version"}
        return {**top, **{name: value for section in SECTIONS for name, value in dataclasses.asdict(getattr(self, section)).items()}}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CalibrationConfig:
        """A config from ``to_dict``'s structure, or from version 1's flat mapping; settings
        absent from it take the defaults."""
        settings = read_settings(values, "calibration settings")
        if _format_version(values) == 1 and "sink_tokens" not in settings:
            settings["sink_tokens"] = 0  # written before sink rows existed: calibrated without them
        return cls._from_settings(settings)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> CalibrationConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def _from_settings(cls, settings: dict[str, Any]) -> CalibrationConfig:
        """A config from settings by name (sections flattened, names already checked)."""
        grouped: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        top: dict[str, Any] = {}
        for name, value in settings.items():
            if name in _SECTION_OF:
                grouped[_SECTION_OF[name]][name] = value
            else:
                top[name] = value
        return cls(**top, **{section: SECTIONS[section](**values) for section, values in grouped.items()})


# --- the generic reader of config.json and recipe files

_TOP_SETTINGS = tuple(item.name for item in dataclasses.fields(CalibrationConfig) if item.name not in SECTIONS and item.name != "version")
SETTING_NAMES = (*_TOP_SETTINGS, *_SECTION_OF)  # every setting, in the order of the structure


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerced(value: Any, kind: Any) -> Any:
    """YAML reads ``weight_bits: 4`` as an int and ``accuracy_budget: 0`` as an int: a
    string setting takes a number as its text, a float setting an int as a float."""
    if kind is str and _is_number(value):
        return str(value)
    if kind is float and _is_int(value):
        return float(value)
    return value


def _known(values: dict, valid: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; valid ones are {sorted(valid)}")


def _format_version(values: dict) -> Any:
    """``values``' version; without one, 1 (flat) unless it has sections."""
    return values.get("version", CONFIG_VERSION if set(values) & set(SECTIONS) else 1)


def read_settings(values: Any, what: str) -> dict[str, Any]:
    """The settings by name in ``values``: version 2's sections, or version 1's flat mapping
    (``version`` absent or 1). Unknown names and sections are refused with the valid ones;
    settings not in ``values`` are not in the result."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what}: got {type(values).__name__}, expected a mapping of settings")
    version = _format_version(values)
    if version not in (1, CONFIG_VERSION):
        raise ConfigError(f"version: got {version!r}, expected 1 or {CONFIG_VERSION}")
    types = {name: kind for cls in (CalibrationConfig, *SECTIONS.values()) for name, kind in _field_types(cls).items()}
    if version == 1:
        _known(values, (*SETTING_NAMES, "version"), what)
        flat = {name: value for name, value in values.items() if name != "version"}
    else:
        _known(values, (*_TOP_SETTINGS, *SECTIONS, "version"), what)
        flat = {name: value for name, value in values.items() if name in _TOP_SETTINGS}
        for section, cls in SECTIONS.items():
            if section not in values:
                continue
            inner = values[section]
            if not isinstance(inner, dict):
                raise ConfigError(f"{section}: got {inner!r}, expected a mapping of settings")
            _known(inner, tuple(item.name for item in dataclasses.fields(cls)), f"{section} settings")
            flat.update(inner)
    return {name: _coerced(value, types[name]) for name, value in flat.items()}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The settings a recipe file (YAML or JSON, ``CalibrationConfig.to_dict``'s structure,
    any part of it) gives, by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--recipe {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"--recipe {path}: got a {path.suffix or 'suffix-less'} file, expected .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as error:  # yaml.YAMLError, json.JSONDecodeError
        raise ConfigError(f"--recipe {path}: not readable ({error})") from error
    return read_settings(values if values is not None else {}, f"settings in --recipe {path}:")
