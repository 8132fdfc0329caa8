"""Shadow outlier execution on the CPU (arXiv 2407.05858 §3.3).

Eq. 1: x = clip(x, −t, t) + x_out, so  x·Wᵀ ≈ Q(clip(x))·Q(W)ᵀ (NPU) + x_out·W_fpᵀ (CPU).
x_out is zero except in the few channels where a value crossed the threshold t, so the
CPU multiplies only those channels' columns: the resident hot columns, and the cold
columns read from the bundle's cold file when an outlier lands there (not kept in memory).
The output side has a shadow too: the few output channels whose range dwarfs the rest
(massive activations) are computed in FP on the CPU, their NPU weight rows being zero.
And whole rows go to the shadow path: the attention-sink positions (the first
``sink_tokens`` of a sequence, PrefixQuant arXiv 2410.05265), whose activations are
massive in every channel — clip(x) = 0 and x_out = x there (:func:`split_outliers`).
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from quantkit.runtime.cpu_ops import linear

__all__ = ["RuntimeCounters", "ShadowSite", "ColdColumns", "split_outliers", "outlier_product", "combine"]

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}
_SINK_PRODUCTS = 4  # sink rows' shadow products kept per site (distinct first tokens)


def split_outliers(x: torch.Tensor, threshold: float, sink_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 of §3.3: x = clip(x, −t, t) + x_out; returns (clip(x), x_out). ``sink_rows``
    (a bool mask over x's rows, dim −2): rows sent whole to x_out, their clip(x) zero."""
    clipped = x.clamp(-threshold, threshold)
    if sink_rows is not None and bool(sink_rows.any()):
        clipped[..., sink_rows, :] = 0
    return clipped, x - clipped


def outlier_product(excess: torch.Tensor, columns: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int] | None:
    """x_out·W_fpᵀ of Eq. 1 for x_out [rows, in]: (the product [rows, out], the number of
    outlier values), None if no value crossed the clip. ``columns(active)`` gives
    W_fp[:, active]ᵀ [len(active), out] for the sorted channels that hold outliers.

    x_out is sparse (a fraction of a percent of its entries are non-zero), so it is
    multiplied as a sparse matrix over those channels only. Each output is a sum over its
    row's non-zeros in index order, so several Linears' columns side by side give the
    values one product per Linear gives."""
    nonzero = excess.nonzero()  # [nnz, 2], row-major: the sparse matrix is coalesced as built
    if nonzero.shape[0] == 0:
        return None
    rows, channels = nonzero.unbind(1)
    active, slots = channels.unique(return_inverse=True)  # sorted channels; each value's column among them
    indices, values = torch.stack([rows, slots]), excess[rows, channels]
    sparse = torch.sparse_coo_tensor(indices, values, (excess.shape[0], active.numel()), is_coalesced=True, check_invariants=False)
    return torch.sparse.mm(sparse, columns(active)), nonzero.shape[0]


def combine(npu_out: torch.Tensor, output_part: tuple[torch.Tensor, torch.Tensor] | None, outlier_part: torch.Tensor | None) -> torch.Tensor:
    """Eq. 1's sum for one Linear: the NPU output Q(clip(x))·Q(W)ᵀ, the output-side shadow
    channels C put in (``output_part`` = (C, clip(x)·W[C]ᵀ + b[C]); their NPU rows are
    zero), plus the shadow product x_out·W_fpᵀ (``outlier_part``)."""
    y = npu_out
    if output_part is not None:
        y = y.index_add(-1, output_part[0], output_part[1])
    if outlier_part is not None:
        y = y + outlier_part
    return y


class ColdColumns:
    """Rows of the channel-major cold tensors, read from the bundle file when needed.

    The safetensors library returns whole tensors; the shadow path needs a few channel
    rows of each and should not read the rest, so this indexes rows through the safetensors
    header (8-byte little-endian length, then JSON with dtype, shape and data offsets of
    each tensor) and reads each run of consecutive rows with one seek and read. Read, not
    memory-mapped: a mapped page stays in the process's resident memory once touched, and
    a sink row touches every column (on a 1B-parameter model, 3.8 GB of them), while a
    read leaves the file's pages to the operating system's cache.
    """

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 - held as long as the runtime, closed with it
        (header_length,) = struct.unpack("<Q", self._file.read(8))
        header = json.loads(self._file.read(header_length))
        self._lock = threading.Lock()  # seek + read is one step: the CPU and NPU workers may both read
        self._tensors = {}  # name → (first byte, shape, numpy dtype)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if _NUMPY_DTYPES.get(info["dtype"]) is None:
                raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; cold shadow columns are stored as F32 or F16")
            self._tensors[name] = (8 + header_length + info["data_offsets"][0], tuple(info["shape"]), np.dtype(_NUMPY_DTYPES[info["dtype"]]))

    def rows(self, name: str, channels: torch.Tensor) -> torch.Tensor:
        """W[:, channels]ᵀ of one Linear: [len(channels), out] (a copy of just those rows)."""
        begin, (_, width), dtype = self._tensors[name]
        wanted = channels.numpy().astype(np.int64)
        out = np.empty((wanted.size, width), dtype=dtype)
        row_bytes = width * dtype.itemsize
        # runs of consecutive rows (in the order asked), each one read
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        with self._lock:
            for first, last in zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [wanted.size])), strict=True):
                if first == last:
                    continue
                self._file.seek(begin + int(wanted[first]) * row_bytes)
                target = memoryview(out[first:last]).cast("B")
                if self._file.readinto(target) != target.nbytes:  # a buffered read comes back short only at the end of the file
                    raise ValueError(f"{self._file.name}: {name} ends before row {int(wanted[last - 1])}; the bundle file is truncated")
        return torch.from_numpy(out).float()


@dataclass
class RuntimeCounters:
    outlier_values: int = 0  # values beyond the clip sent to the shadow path
    cold_loads: int = 0  # reads of cold shadow columns from the bundle (one per Linear and chunk)
    cold_columns: int = 0  # cold channel columns read
    npu_runs: int = 0  # NPU graph executions


class ShadowSite:
    """The Linears that read one activation (q/k/v, o, gate/up or down) and their shadow weights."""

    def __init__(
        self, site: dict, hot_weights: dict[str, torch.Tensor], cold_file: ColdColumns, counters: RuntimeCounters, enabled: bool = True, sink_tokens: int = 0
    ):
        self.linear_names: list[str] = site["linear_names"]
        self.threshold = float(site["threshold_"])
        self.num_channels = int(site["num_channels"])
        # Outliers are possible only where the clip is below the calibrated range; pruned
        # layers (§3.3, least important) keep only the clipped part.
        self.shadowed = enabled and not site["pruned"] and self.threshold < site["absmax_"]
        self.sink_tokens = sink_tokens if self.shadowed else 0  # positions < this run in FP (module docstring)
        hot = torch.tensor(site["hot_channels_"], dtype=torch.long)
        is_hot = torch.zeros(self.num_channels, dtype=torch.bool)
        is_hot[hot] = True
        self.hot_channels = hot  # column j of "<linear>.hot" is channel hot_channels[j]
        self.cold_channels = (~is_hot).nonzero().flatten()  # row j of "<linear>.cold"
        # channel → its row in the hot (resident) or cold (on disk) weights
        self._is_hot = is_hot
        self._slot = torch.empty(self.num_channels, dtype=torch.long)
        self._slot[hot] = torch.arange(hot.numel())
        self._slot[self.cold_channels] = torch.arange(self.cold_channels.numel())
        # resident hot columns, channel-major like the cold ones: row j = channel hot_channels[j],
        # the site's Linears side by side (one gather and one product per site)
        self._hot = torch.cat([hot_weights[f"{name}.hot"].T for name in self.linear_names], dim=1).contiguous() if self.shadowed else None
        self._out_sizes = [hot_weights[f"{name}.hot"].shape[0] for name in self.linear_names] if self.shadowed else []
        self._cold_file = cold_file
        self.counters = counters
        self._sink_products: dict[bytes, torch.Tensor] = {}  # sink row values → its shadow product (outlier_products)
        # Output-side shadow: per Linear, the output channels C whose NPU weight rows are
        # zero; the CPU computes clip(x)·W[C]ᵀ + b[C] in FP (part of the deployed
        # arithmetic, so it runs with the input shadow disabled too).
        self._output_rows = {}
        for name, channels in site.get("output_channels_", {}).items():
            self._output_rows[name] = (torch.tensor(channels, dtype=torch.long), hot_weights[f"{name}.out_rows"], hot_weights.get(f"{name}.out_bias"))

    @property
    def has_output_channels(self) -> bool:
        return bool(self._output_rows)

    def output_products(self, clipped: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per Linear of the site: (channels C, clip(x)·W[C]ᵀ + b[C]) or None."""
        products = []
        for name in self.linear_names:
            if name not in self._output_rows:
                products.append(None)
                continue
            channels, rows, bias = self._output_rows[name]
            products.append((channels, linear(clipped, rows, bias)))
        return products

    def split(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(clip(x), x_out) of rows at ``positions`` — x_out is None when this site has no
        shadow path; the sink positions go whole to x_out."""
        sink_rows = positions < self.sink_tokens if self.sink_tokens and positions is not None else None
        clipped, excess = split_outliers(x, self.threshold, sink_rows)
        return clipped, excess if self.shadowed else None

    def outlier_products(self, excess: torch.Tensor | None, positions: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """x_out·W_fpᵀ for each Linear of the site (:func:`outlier_product`, against those
        channels' FP columns of all the site's Linears at once); None if no value crossed
        the clip. ``positions`` (of excess's rows) marks the sink rows (:meth:`split`).

        A sink row is dense, so its product needs every FP column of the site, cold ones
        included. What reaches a sink position depends only on the tokens up to it, so
        every prompt that starts with the same tokens brings the same rows: their products
        are kept, keyed by each row's exact values, and reused (:meth:`_sink_product`)."""
        if excess is None:
            return None
        sink_rows = positions < self.sink_tokens if self.sink_tokens and positions is not None else None
        if sink_rows is None or not bool(sink_rows.any()):
            product = self._counted(outlier_product(excess, self._columns))
        else:
            product = torch.zeros(excess.shape[0], self._hot.shape[1])
            rest = self._counted(outlier_product(excess[~sink_rows], self._columns))
            if rest is not None:
                product[~sink_rows] = rest
            for row in sink_rows.nonzero().flatten().tolist():
                product[row] = self._sink_product(excess[row])
        return None if product is None else list(product.split(self._out_sizes, dim=1))

    def _counted(self, product: tuple[torch.Tensor, int] | None) -> torch.Tensor | None:
        if product is None:
            return None
        self.counters.outlier_values += product[1]
        return product[0]

    def _sink_product(self, row: torch.Tensor) -> torch.Tensor:
        """x_out·W_fpᵀ of one sink row, from the last ``_SINK_PRODUCTS`` computed
        (:meth:`outlier_products`); computed as every other row is, so a reused product
        has the values a fresh one would."""
        key = row.numpy().tobytes()
        cached = self._sink_products.pop(key, None)
        if cached is None:
            product = self._counted(outlier_product(row[None], self._columns))
            cached = torch.zeros(self._hot.shape[1]) if product is None else product[0]
        else:
            self.counters.outlier_values += int(row.ne(0).sum())
        self._sink_products[key] = cached  # most recent last
        if len(self._sink_products) > _SINK_PRODUCTS:
            del self._sink_products[next(iter(self._sink_products))]
        return cached

    def _columns(self, active: torch.Tensor) -> torch.Tensor:
        """W_fp[:, active]ᵀ of every Linear of the site: resident hot rows, cold rows read
        on demand from the bundle (only the rows needed)."""
        hot_mask = self._is_hot[active]
        hot_at, cold_at = hot_mask.nonzero().flatten(), (~hot_mask).nonzero().flatten()  # rows of the result
        weight = torch.empty(active.numel(), self._hot.shape[1])
        weight.index_copy_(0, hot_at, self._hot.index_select(0, self._slot[active[hot_at]]))
        if cold_at.numel():
            cold_rows = self._slot[active[cold_at]]
            weight.index_copy_(0, cold_at, torch.cat([self._cold_file.rows(f"{name}.cold", cold_rows) for name in self.linear_names], dim=1))
            self.counters.cold_loads += len(self.linear_names)
            self.counters.cold_columns += int(cold_rows.numel()) * len(self.linear_names)
        return weight
