"""A GPTQ/AWQ/compressed-tensors checkpoint folder, read lazily: its quantized linear layers, checked against its config.

Building a :class:`PrequantizedCheckpoint` reads only the safetensors
headers and checks every quantized layer's tensors (presence, dtypes,
shapes against the model the config describes); the values are read one
layer at a time by :meth:`PrequantizedCheckpoint.layer_weights`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..quant.marlin import marlin_shape_problem
from . import bitsandbytes as bnb
from . import compressed_tensors as ct
from . import mxfp4 as mx
from .formats import SIDECAR, PrequantizedFormat, detect_prequantized, read_json
from .integrity import index_shards
from .layers import (
    QUANT_TENSORS,
    LayerWeights,
    QuantizedLinear,
    convert_awq_layer,
    convert_gptq_layer,
    convert_marlin_layer,
    group_count,
    packed_shapes,
)

logger = logging.getLogger("optimum_wc")

_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


@dataclass
class _TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: "I32", "F16", ...


def _weight_files(path: Path, sidecar: dict | None) -> list[Path]:
    shards = index_shards(path)
    if shards is not None:
        return shards
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    base = (sidecar or {}).get("model_file_base_name")
    if base and (path / f"{base}.safetensors").is_file():
        return [path / f"{base}.safetensors"]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise ExportError(
            f"{path} holds its quantized weights as pickled .bin/.pt files; optimum-wc reads safetensors only. "
            "Re-save the checkpoint with safetensors (save_pretrained(..., safe_serialization=True))."
        )
    raise ExportError(f"{path} has no .safetensors weight file; pass the folder that holds the quantized weights.")


def _expected_linear_shapes(path: Path, trust_remote_code: bool) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model the config describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ExportError(
            f"cannot build the model described by {path / 'config.json'} to check the quantized tensors' "
            f"shapes: {exc}. "
            "Check the config (or pass trust_remote_code=True for custom code)."
        ) from exc
    return {name: tuple(int(d) for d in p.shape) for name, p in model.state_dict(keep_vars=True).items()}


class PrequantizedCheckpoint:
    """The quantized linear layers of a GPTQ/AWQ checkpoint folder, read lazily.

    Building it reads only the safetensors headers and checks every quantized
    layer's tensors (presence, dtypes, shapes against the config); the values
    are read one layer at a time by :meth:`layer_weights`.
    """

    def __init__(
        self, model_dir: str | os.PathLike, fmt: PrequantizedFormat | None = None, *, trust_remote_code: bool = False
    ):
        self.path = Path(str(model_dir))
        found = fmt or detect_prequantized(self.path)
        if found is None:
            raise ExportError(
                f"{self.path} is not a GPTQ/AWQ checkpoint (no quant_method 'gptq' or 'awq' in its config)."
            )
        self.fmt: PrequantizedFormat = found
        sidecar_file = self.path / SIDECAR
        self.files = _weight_files(self.path, read_json(sidecar_file) if sidecar_file.is_file() else None)
        self.tensors: dict[str, _TensorInfo] = {}
        self._read_headers()
        self.expected = _expected_linear_shapes(self.path, trust_remote_code)
        self.layers: list[QuantizedLinear] = self._find_layers()
        if not self.layers:
            marker = {"compressed-tensors": ".weight_packed or an int8 .weight",
                      "bitsandbytes": ".SCB or .weight.quant_state.bitsandbytes__*",
                      "mxfp4": "_blocks"}.get(self.fmt.method, ".qweight")
            raise ExportError(
                f"{self.path}: the config says {self.fmt.method.upper()} but no tensor ends in {marker}; "
                "the weights are "
                f"not quantized. Remove quantization_config from config.json to export it as a float model."
            )

    def _read_headers(self) -> None:
        from safetensors import safe_open

        for file in self.files:
            try:
                with safe_open(file, framework="np") as f:
                    for name in f.keys():
                        s = f.get_slice(name)
                        self.tensors[name] = _TensorInfo(file, tuple(int(d) for d in s.get_shape()), str(s.get_dtype()))
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise ExportError(
                    f"cannot read {file}: {exc}; the file is damaged or not safetensors: re-download it."
                ) from exc

    def _find_layers(self) -> list[QuantizedLinear]:
        prefixes: dict[str, dict[str, str]] = {}
        headers = {n: (t.shape, t.dtype) for n, t in self.tensors.items()}
        if self.fmt.method == "compressed-tensors":
            prefixes = ct.layer_tensors(headers)

            def check(prefix: str, found: dict[str, str]) -> QuantizedLinear:
                return ct.check_layer(prefix, found, self.fmt, self.tensors, self._linear_shape)
        elif self.fmt.method == "mxfp4":
            prefixes = mx.layer_tensors(headers)

            def check(prefix: str, found: dict[str, str]) -> QuantizedLinear:
                return mx.check_layer(prefix, found, self.tensors, self.expected)
        elif self.fmt.method == "bitsandbytes":
            prefixes = bnb.layer_tensors(headers)

            def check(prefix: str, found: dict[str, str]) -> QuantizedLinear:
                return bnb.check_layer(prefix, found, self.fmt, self.tensors, self._linear_shape, self.read)
        else:
            kinds = {k: k for k in (QUANT_TENSORS if self.fmt.method == "gptq" else QUANT_TENSORS[:3])}
            if self.fmt.checkpoint_format == "marlin":  # AutoGPTQ's Marlin names its tensors B and s
                kinds = {"B": "qweight", "s": "scales"}
            for name in self.tensors:
                prefix, _, kind = name.rpartition(".")
                if kind in kinds and prefix:
                    prefixes.setdefault(prefix, {})[kinds[kind]] = name
            check = self._check_layer
        order = {name: i for i, name in enumerate(self.expected)}
        ordered = sorted(prefixes, key=lambda p: (order.get(f"{p}.weight", order.get(p, len(order))), p))
        return [check(prefix, prefixes[prefix]) for prefix in ordered]  # model order: first bad layer first

    def _linear_shape(self, prefix: str, marker: str) -> tuple[int, int]:
        weight_name = f"{prefix}.weight"
        if weight_name not in self.expected:
            raise ExportError(
                f"{prefix}.{marker} belongs to no linear layer of the model described by config.json "
                f"(it has no parameter {weight_name}). The weights do not match the config: use the config.json "
                "saved with these weights."
            )
        expected = self.expected[weight_name]
        if len(expected) != 2:
            raise ExportError(
                f"{prefix}.{marker}: {weight_name} has shape {list(expected)} in the model, not a linear layer's [out, in]."
            )
        return int(expected[0]), int(expected[1])

    def _check_layer(self, prefix: str, found: dict[str, str]) -> QuantizedLinear:
        fmt, method = self.fmt.for_layer(prefix), self.fmt.method.upper()
        if fmt is None:
            raise ExportError(
                f"{prefix}.qweight is in the checkpoint, but a per-layer override of {self.fmt.source} leaves "
                f"{prefix} float; the weights and the config disagree: use the config saved with these weights."
            )
        marlin = fmt.checkpoint_format in ("marlin", "awq_marlin")
        required = ("qweight", "qzeros", "scales") + (("g_idx",) if fmt.method == "gptq" and fmt.desc_act else ())
        required = ("qweight", "scales") if marlin else required
        for kind in required:
            if kind not in found:
                present = ", ".join(sorted(found.values()))
                raise ExportError(
                    f"{prefix}.{kind} is missing from the checkpoint ({present} are there): "
                    f"a {method} linear layer needs "
                    f"{', '.join(required)}. The checkpoint is incomplete: re-download or re-save it."
                )
        weight_name = f"{prefix}.weight"
        if weight_name in self.tensors:
            raise ExportError(
                f"{weight_name} and {prefix}.qweight are both in the checkpoint: "
                "the layer is both float and quantized. "
                "Remove one of them (re-save the checkpoint)."
            )
        if weight_name not in self.expected:
            raise ExportError(
                f"{prefix}.qweight belongs to no linear layer of the model described by config.json "
                "(it has no parameter "
                f"{weight_name}). The weights do not match the config: use the config.json saved with these weights."
            )
        expected = self.expected[weight_name]
        if len(expected) != 2:
            raise ExportError(
                f"{prefix}.qweight: {weight_name} has shape {list(expected)} in the model, "
                "not a linear layer's [out, in]."
            )
        n_out, n_in = expected
        bits = fmt.bits
        n_groups = group_count(n_in, fmt.group_size)
        if marlin:
            problem = marlin_shape_problem(n_in, n_out, n_groups)
            if problem:
                raise ExportError(f"{prefix}: {problem}; the checkpoint does not match its config.json.")
            shapes = {"qweight": (n_in // 16, 2 * n_out), "scales": (n_groups, n_out)}
            layout = {"qweight": "[in / 16, 2 * out]", "scales": "[groups, out]"}
        elif fmt.method == "gptq":
            shapes = packed_shapes(fmt, n_in, n_out)
            layout = {"qweight": "[in * bits / 32, out]", "qzeros": "[groups, out * bits / 32]",
                      "scales": "[groups, out]", "g_idx": "[in]"}
        else:
            shapes = packed_shapes(fmt, n_in, n_out)
            if fmt.checkpoint_format == "awq_gemv":
                layout = {"qweight": "[out, in / 8]", "qzeros": "[out, groups padded]",
                          "scales": "[out, 8 * groups padded]"}
            else:
                layout = {"qweight": "[in, out / 8]", "qzeros": "[groups, out / 8]", "scales": "[groups, out]"}
        dtypes = {"qweight": ("I32", "U32"), "qzeros": ("I32", "U32"),
                  "scales": ("F16", "BF16", "F32"), "g_idx": ("I32", "I64")}
        for kind, name in found.items():
            info = self.tensors[name]
            if info.dtype not in dtypes[kind]:
                raise ExportError(
                    f"{name} is {info.dtype}, but a {method} {kind} must be {' or '.join(dtypes[kind])}; "
                    "the checkpoint uses a packing optimum-wc does not read. Re-save it in the standard format."
                )
            if info.shape != shapes[kind]:
                raise ExportError(
                    f"{name} has shape {list(info.shape)}, but config.json makes {weight_name} [{n_out}, {n_in}], so a "
                    f"{bits}-bit {method} {kind} with group_size={fmt.group_size} must be {list(shapes[kind])} "
                    f"({layout[kind]}). The weights and the config disagree: use the config saved with these weights "
                    "(check bits, group_size and the layer sizes)."
                )
        return QuantizedLinear(prefix, n_in, n_out, dict(found), fmt=fmt)

    # -- reading

    def read(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (bfloat16 comes back as float32)."""
        from safetensors import safe_open

        info = self.tensors[name]
        if info.dtype == "BF16":
            with safe_open(info.file, framework="pt") as f:
                return f.get_tensor(name).float().numpy()
        if info.dtype.startswith("F8"):  # NumPy has no float8: the bytes
            import torch

            with safe_open(info.file, framework="pt") as f:
                return f.get_tensor(name).view(torch.uint8).numpy()
        with safe_open(info.file, framework="np") as f:
            return f.get_tensor(name)

    def layer_weights(self, layer: QuantizedLinear) -> LayerWeights:
        """Unpack, check and convert one layer (raises :class:`ExportError` naming the tensor on bad values)."""
        t = {kind: self.read(name) for kind, name in layer.tensors.items()}
        if self.fmt.method == "bitsandbytes":
            lw = bnb.convert_layer(layer, t)
        elif self.fmt.method == "mxfp4":
            lw = mx.convert_layer(layer, t, self.fmt.experts_as or mx.EXPERTS_AS[0])
        elif layer.group is not None:
            lw = ct.convert_layer(layer.prefix, layer.group, t, layer.in_features, layer.out_features)
        elif (layer.fmt or self.fmt).checkpoint_format in ("marlin", "awq_marlin"):
            lw = convert_marlin_layer(layer.prefix, layer.fmt or self.fmt, t["qweight"], t["scales"])
        elif self.fmt.method == "gptq":
            lw = convert_gptq_layer(layer.prefix, layer.fmt or self.fmt, t["qweight"], t["qzeros"], t["scales"],
                                    t.get("g_idx"), layer.in_features, layer.out_features)
        else:
            lw = convert_awq_layer(layer.prefix, layer.fmt or self.fmt, t["qweight"], t["qzeros"], t["scales"],
                                   layer.in_features, layer.out_features)
        if lw.note:
            logger.info("%s: %s.", layer.prefix, lw.note)
        return lw

    def float_dtype(self) -> str:
        """The checkpoint's float dtype (config ``dtype``/``torch_dtype``; float16 when unset)."""
        config = read_json(self.path / "config.json") if (self.path / "config.json").is_file() else {}
        value = str(config.get("dtype") or config.get("torch_dtype") or "float16").replace("torch.", "")
        return _DTYPES.get(value, "float16")

    def quantized_tensor_names(self) -> set[str]:
        return {name for layer in self.layers for name in layer.tensors.values()}
