"""``compression_report.json``: what was done to a compressed model, beside the model.

:func:`build_report` reads the per-layer records that the engine writes into
the IR's ``rt_info`` (mode, group size, weight count, relative quantization
error, note) and adds totals, file sizes, timings and package versions;
:func:`write_report` saves it; :func:`summary` renders it as text (the
bit-width distribution table of :func:`bitwidth_table`, which the engine
also logs, sizes and timings).  :func:`report_from_dir` rebuilds one from a saved IR
folder alone (``optimum-wc report``).

:class:`Stages` records how long each step of an export takes and shows
them as a progress bar.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .config import CompressWeightsMode, WeightCompressionConfig
from .errors import OptimumWCError
from .ir.rt_info import read_prequantized_info, read_rt_info
from .layout import IR_BIN, IR_XML, REPORT_FILE

__all__ = [
    "REPORT_FILE",
    "Stages",
    "bitwidth_table",
    "build_report",
    "layer_table",
    "package_versions",
    "report_from_dir",
    "summary",
    "totals",
    "write_report",
]

REPORT_VERSION = 1
FLOAT_BIN = f"float_{IR_BIN}"  # key of the float IR's size in "sizes"
_PACKAGES = ("optimum-wc", "openvino", "openvino-tokenizers", "optimum", "optimum-intel", "transformers", "torch", "numpy", "nncf")
# Layer record fields copied into the report, in this order.
_LAYER_FIELDS = ("name", "kind", "shape", "mode", "group_size", "num_weights", "relative_error", "ratio_defining", "note", "ops")


class Stages:
    """Times consecutive named steps into ``timings`` (``<name>_s``), with an optional tqdm bar.

    ``stages.start("export")`` ends the running step and starts the next;
    ``stages.close()`` ends the last one.
    """

    def __init__(self, names: Sequence[str], progress: bool = False, timings: dict[str, float] | None = None, desc: str = "Export"):
        self.timings = {} if timings is None else timings
        self._current: str | None = None
        self._start = 0.0
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(names), desc=desc, unit="step", leave=False)

    def start(self, name: str) -> None:
        self._finish()
        self._current, self._start = name, time.perf_counter()
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=True)

    def _finish(self) -> None:
        if self._current is not None:
            self.timings[f"{self._current}_s"] = round(time.perf_counter() - self._start, 3)
            if self._bar is not None:
                self._bar.update(1)
        self._current = None

    def close(self) -> dict[str, float]:
        self._finish()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return self.timings


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the result (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _label(record: Mapping[str, Any]) -> str:
    if record["mode"] == "float":
        return "float"
    gs = record.get("group_size")
    return f"{record['mode']}, {'per-channel' if gs == -1 else f'group size {gs}'}"


def _bits(mode: str, codebook_size: int | None = None) -> int:
    """Bits per stored weight of a mode (or of a table label ``"<mode>, ..."``): 32 for float."""
    mode = mode.split(",")[0]
    if mode == "float":
        return 32
    if codebook_size is not None and codebook_size > 16:
        return 8
    return CompressWeightsMode(mode).num_bits


def bitwidth_table(records: Sequence[Mapping[str, Any]]) -> str:
    """NNCF-style table: share of parameters (and layers) per mode, overall and among ratio-defining weights."""
    rows: dict[str, list[list[int]]] = OrderedDict()
    for r in records:
        entry = rows.setdefault(_label(r), [[], []])
        entry[0].append(r["num_weights"])
        if r["ratio_defining"]:
            entry[1].append(r["num_weights"])
    total = sum(r["num_weights"] for r in records) or 1
    total_rd = sum(r["num_weights"] for r in records if r["ratio_defining"]) or 1
    n_layers, n_rd = len(records), sum(1 for r in records if r["ratio_defining"])
    header = ["Weight compression mode", "% all parameters (layers)", "% ratio-defining parameters (layers)"]
    body = [
        [label, f"{100 * sum(a) / total:.0f}% ({len(a)} / {n_layers})", f"{100 * sum(b) / total_rd:.0f}% ({len(b)} / {n_rd})"]
        for label, (a, b) in sorted(rows.items(), key=lambda kv: (_bits(kv[0]), kv[0]))
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(3)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join(["Bit-width distribution:", line, fmt(header), line, *map(fmt, body), line])


def totals(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per mode (layers and parameters), overall and among ratio-defining weights, and error summaries."""
    total = sum(r["num_weights"] for r in layers)
    total_rd = sum(r["num_weights"] for r in layers if r.get("ratio_defining"))
    by_label: dict[str, dict[str, Any]] = OrderedDict()
    for r in sorted(layers, key=lambda r: (_bits(r["mode"]), _label(r))):
        entry = by_label.setdefault(
            _label(r),
            {"mode": r["mode"], "group_size": r.get("group_size"), "layers": 0, "num_weights": 0,
             "ratio_defining_layers": 0, "ratio_defining_weights": 0},
        )
        entry["layers"] += 1
        entry["num_weights"] += r["num_weights"]
        if r.get("ratio_defining"):
            entry["ratio_defining_layers"] += 1
            entry["ratio_defining_weights"] += r["num_weights"]
    for entry in by_label.values():
        entry["share_of_weights"] = round(entry["num_weights"] / total, 6) if total else 0.0
        entry["share_of_ratio_defining_weights"] = round(entry["ratio_defining_weights"] / total_rd, 6) if total_rd else 0.0
    by_bits: dict[str, int] = OrderedDict()
    for r in sorted(layers, key=lambda r: _bits(r["mode"], r.get("codebook_size"))):
        key = "float" if r["mode"] == "float" else f"{_bits(r['mode'], r.get('codebook_size'))}-bit"
        by_bits[key] = by_bits.get(key, 0) + r["num_weights"]
    errors = [(r["relative_error"], r["num_weights"]) for r in layers if r["mode"] != "float" and r.get("relative_error") is not None]
    weighted = sum(e * n for e, n in errors) / sum(n for _, n in errors) if errors else None
    worst = max((r for r in layers if r["mode"] != "float" and r.get("relative_error") is not None),
                key=lambda r: r["relative_error"], default=None)
    bits_per_weight = (
        sum(_bits(r["mode"], r.get("codebook_size")) * r["num_weights"] for r in layers) / total if total else None
    )
    return {
        "layers": len(layers),
        "compressed_layers": sum(1 for r in layers if r["mode"] != "float"),
        "num_weights": total,
        "ratio_defining_layers": sum(1 for r in layers if r.get("ratio_defining")),
        "ratio_defining_weights": total_rd,
        "by_mode": by_label,
        "weights_by_bits": by_bits,
        "mean_bits_per_weight": round(bits_per_weight, 4) if bits_per_weight is not None else None,
        "mean_relative_error": round(weighted, 6) if weighted is not None else None,
        "max_relative_error": {"layer": worst["name"], "relative_error": worst["relative_error"]} if worst else None,
    }


def _sizes(model_dir: Path | None, float_bin: Path | int | None = None) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    if model_dir is not None and (model_dir / IR_BIN).is_file():
        sizes[IR_BIN] = (model_dir / IR_BIN).stat().st_size
    if isinstance(float_bin, int):  # the float model's constant bytes, when no float IR was written
        sizes[FLOAT_BIN] = float_bin
    elif float_bin is not None and float_bin.is_file():
        sizes[FLOAT_BIN] = float_bin.stat().st_size
    if sizes.get(FLOAT_BIN) is not None:
        if sizes.get(IR_BIN):
            sizes["compression_ratio"] = round(sizes[FLOAT_BIN] / sizes[IR_BIN], 3)
    return sizes


def build_report(
    ov_model=None,
    *,
    model_dir: str | Path | None = None,
    model_id: str | Path | None = None,
    timings: Mapping[str, float] | None = None,
    float_bin: str | Path | int | None = None,
    resources: Mapping[str, Any] | None = None,
    rt_info: tuple[dict, list[dict]] | None = None,
    source: str = "export",
) -> dict[str, Any]:
    """The report of a compressed model, from its ``rt_info`` (``ov_model`` or ``rt_info=(config, layers)``).

    ``model_dir``: the folder holding ``openvino_model.bin`` (for sizes);
    ``float_bin``: the float IR's ``.bin`` or its size in bytes (for the compression ratio);
    ``resources``: peak memory and bytes read/written (``optimum_wc.resources``);
    ``timings``: seconds per step.  A model without optimum-wc ``rt_info``
    (kept float) gives an empty layer list and ``config: None``.
    """
    if rt_info is None and ov_model is not None:
        rt_info = read_rt_info(ov_model)
    config, records = rt_info if rt_info is not None else (None, [])
    layers = [{k: r.get(k) for k in _LAYER_FIELDS} for r in records]
    report = {
        "report_version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model": None if model_id is None else str(model_id),
        "compressed": config is not None,
        "config": config,
        "totals": totals(layers),
        "sizes": _sizes(Path(model_dir) if model_dir is not None else None,
                        float_bin if isinstance(float_bin, int) or not float_bin else Path(float_bin)),
        "timings": {k: round(float(v), 3) for k, v in (timings or {}).items()},
        "resources": dict(resources or {}),
        "versions": package_versions(),
        "layers": layers,
    }
    prequantized = None if ov_model is None else read_prequantized_info(ov_model)
    if prequantized is not None:  # a GPTQ/AWQ checkpoint's integer weights, kept as they were
        report["prequantized"] = prequantized
    return report


def write_report(out_dir: str | Path, ov_model=None, **kwargs: Any) -> dict[str, Any]:
    """Build the report (see :func:`build_report`) and write it to ``out_dir/compression_report.json``."""
    out_dir = Path(out_dir)
    kwargs.setdefault("model_dir", out_dir)
    report = build_report(ov_model, **kwargs)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def report_from_dir(model_dir: str | Path) -> dict[str, Any]:
    """The report of a saved model, read back from its IR.

    Layers, config and sizes always come from the IR itself; timings, model
    id and versions come from ``compression_report.json`` when present.
    """
    import openvino as ov

    model_dir = Path(model_dir)
    xml = model_dir / IR_XML
    if not xml.is_file():
        raise OptimumWCError(f"{model_dir} holds no {IR_XML}; pass a folder written by optimum-wc.")
    try:
        model = ov.Core().read_model(xml)
    except Exception as exc:  # noqa: BLE001 - openvino raises RuntimeError with a long text
        raise OptimumWCError(f"cannot read {xml}: {' '.join(str(exc).split())[:300]}") from exc
    saved: dict[str, Any] = {}
    if (model_dir / REPORT_FILE).is_file():
        try:
            saved = json.loads((model_dir / REPORT_FILE).read_text())
        except ValueError:
            saved = {}
    report = build_report(model, model_dir=model_dir, model_id=saved.get("model"), timings=saved.get("timings"),
                          resources=saved.get("resources"), source=saved.get("source", "ir"))
    if saved.get("sizes", {}).get(FLOAT_BIN):
        report["sizes"][FLOAT_BIN] = saved["sizes"][FLOAT_BIN]
        if report["sizes"].get(IR_BIN):
            report["sizes"]["compression_ratio"] = round(
                report["sizes"][FLOAT_BIN] / report["sizes"][IR_BIN], 3
            )
    if saved.get("versions"):
        report["versions"] = saved["versions"]
    if saved.get("created"):
        report["created"] = saved["created"]
    return report


# -- text -------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(row[i])) for row in [list(header), *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def layer_table(report: Mapping[str, Any]) -> str:
    """One line per layer: name, kind, shape, mode, group size, weights, relative error, note."""
    rows = []
    for r in report["layers"]:
        gs = r.get("group_size")
        rows.append([
            r["name"], r.get("kind") or "", "x".join(map(str, r.get("shape") or [])), r["mode"],
            "-" if gs is None else ("per-channel" if gs == -1 else str(gs)), f"{r['num_weights']:,}",
            "-" if r.get("relative_error") is None else f"{r['relative_error']:.4f}", r.get("note") or "",
        ])
    return _table(["layer", "kind", "shape", "mode", "group size", "weights", "rel. error", "note"], rows, right=(5, 6))


def _config_text(config: Mapping[str, Any]) -> str:
    """The mode and the options that differ from their defaults (calibration settings only when data is used)."""
    defaults = WeightCompressionConfig().to_dict()
    data_aware = any(config.get(k) for k in ("awq", "scale_estimation", "gptq", "lora_correction")) or (
        config.get("sensitivity_metric") not in (None, "weight_quantization_error")
    )
    parts = [f"mode={config.get('mode')}"]
    for key, value in sorted(config.items()):
        if key == "mode" or value == defaults.get(key, object()):
            continue
        if key in ("dataset", "subset_size", "sample_length") and not data_aware:
            continue
        if key == "ignored_scope":
            value = {k: v for k, v in value.items() if v}
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def summary(report: Mapping[str, Any]) -> str:
    """The bit-width distribution table, sizes and timings, as printed at the end of an export."""
    lines = []
    if report.get("model"):
        lines.append(f"Model: {report['model']}")
    pre = report.get("prequantized")
    if isinstance(pre, dict) and pre.get("layers"):
        fmt = pre.get("format") or {}
        if isinstance(fmt, dict):
            fmt = fmt.get("quant_method") or fmt.get("method") or fmt.get("name") or "GPTQ/AWQ"
        name = fmt
        lines.append(f"Pre-quantized checkpoint ({name}): {len(pre['layers'])} layers keep its integer weights.")
    if not report.get("compressed"):
        lines.append("No compression by optimum-wc" + (" of the other weights." if pre else ": weights kept float."))
    else:
        lines.append("Config: " + _config_text(report.get("config") or {}))
        lines.append(bitwidth_table(report["layers"]))
        t = report["totals"]
        if t.get("mean_relative_error") is not None:
            worst = t.get("max_relative_error") or {}
            lines.append(
                f"Relative quantization error: {t['mean_relative_error']:.4f} weighted mean, "
                f"{worst.get('relative_error', 0):.4f} max ({worst.get('layer')}); "
                f"{t['mean_bits_per_weight']:.2f} bits per weight on average."
            )
    sizes = report.get("sizes") or {}
    if sizes.get(IR_BIN) is not None:
        text = f"Size: {IR_BIN} {_mib(sizes[IR_BIN])}"
        if sizes.get(FLOAT_BIN) and report.get("compressed"):
            text += f" (float {_mib(sizes[FLOAT_BIN])}, {sizes.get('compression_ratio', 0):.2f}x smaller)"
        lines.append(text + ".")
    timings = report.get("timings") or {}
    if timings:
        lines.append("Time: " + ", ".join(f"{k[:-2] if k.endswith('_s') else k} {v:.1f} s" for k, v in timings.items()) + ".")
    return "\n".join(lines)
