"""Fuzzing bitsandbytes layers: random quant states and tensors give a finite layer or our error naming the tensor.

Property-based (hypothesis, derandomized).  4-bit NF4/FP4 layers (double
quantized or not) and LLM.int8 layers get their tensors mostly of the right
shape and dtype with random values (NaN/inf/huge absmax, SCB and look-up
tables), sometimes of a wrong shape (empty ones included) or dtype,
sometimes one missing; the JSON quant state gets odd values (a shape that is
not a list, a zero or textual nested_blocksize, a NaN offset...) or is not
JSON at all.  The header check the reader runs (:func:`check_layer`) and the
public converter (:func:`convert_layer`) give a result or an
:class:`~optimum_wc.errors.ExportError` naming the layer; a converted
layer's weight is finite and ``[out, in]``, its float16 scales too, and
equals bitsandbytes' dequantization.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fuzz_arrays import FUZZ, header_of, our_error, ours_or_finite, tensor
from hypothesis import given
from hypothesis import strategies as st

from optimum_wc.checkpoints import bitsandbytes as bnb
from optimum_wc.checkpoints.layers import QuantizedLinear
from optimum_wc.checkpoints.settings import PrequantizedFormat
from optimum_wc.errors import ExportError
from optimum_wc.quant.minifloat import NF4_VALUES

PREFIX = "model.layers.0.mlp.up_proj"
ODD = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=4)
       | st.lists(st.integers(-2, 300), max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _state(quant: str, block: int, n_out: int, n_in: int, nested: bool) -> dict:
    state = {"quant_type": quant, "blocksize": block, "dtype": "bfloat16", "shape": [n_out, n_in]}
    if nested:
        state.update(nested_blocksize=256, nested_dtype="float32", nested_offset=0.03125)
    return state


def _raw(data, state: dict) -> np.ndarray:
    """The quant state's bytes: as bitsandbytes writes it, with an odd value, or not JSON."""
    what = data.draw(st.integers(0, 9), label="state damage")
    if what == 0:
        return np.frombuffer(data.draw(st.binary(max_size=40), label="state bytes"), dtype=np.uint8)
    if what <= 2:
        key = data.draw(st.sampled_from(["quant_type", "blocksize", "shape", "nested_blocksize", "nested_offset"]))
        state = {**state, key: data.draw(ODD, label=key)}
    return np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)


def _tensors(data, expected: dict, quant_map: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {}
    for kind, (shape, dtype) in expected.items():
        arrays[kind] = data.draw(tensor(shape, bnb.READ_AS[dtype], high=127 if kind == "weight" else None,
                                        low=-127 if kind == "weight" else 0), label=kind)
    if "weight.quant_map" in arrays and data.draw(st.integers(0, 2)):
        arrays["weight.quant_map"] = quant_map
    if data.draw(st.integers(0, 14)) == 0:
        del arrays[data.draw(st.sampled_from(sorted(arrays)), label="missing")]
    return arrays


@FUZZ
@given(data=st.data(), four_bit=st.booleans(), nested=st.booleans(), quant=st.sampled_from(["nf4", "fp4"]),
       block=st.sampled_from([16, 64]), n_in=st.sampled_from([64, 128]), n_out=st.sampled_from([16, 32]))
def test_bitsandbytes_layer_of_random_tensors(data, four_bit, nested, quant, block, n_in, n_out):
    state = _state(quant, block, n_out, n_in, nested) if four_bit else {}
    fp4 = (np.array([0, 0.0052, 0.6667, 1, 0.3333, 0.5, 0.1667, 0.25] * 2) * np.repeat([1, -1], 8)).astype(np.float32)
    arrays = _tensors(data, bnb._expected(n_out, n_in, state), NF4_VALUES.astype(np.float32) if quant == "nf4" else fp4)
    names = {kind: f"{PREFIX}.{kind}" for kind in arrays}
    if four_bit:
        names["quant_state"] = f"{PREFIX}.weight.quant_state.bitsandbytes__{quant}"
        arrays["quant_state"] = _raw(data, state)
    else:
        names["weight_format"] = f"{PREFIX}.weight_format"
        arrays["weight_format"] = np.array([0] if data.draw(st.integers(0, 4)) else data.draw(
            st.lists(st.integers(0, 3), max_size=2)), dtype=np.uint8)
    headers = {names[k]: header_of(a, ()) for k, a in arrays.items()}
    fmt = PrequantizedFormat("bitsandbytes", 4 if four_bit else 8, -1, True, False, quant if four_bit else "int8",
                             "config.json")
    by_name = {names[k]: a for k, a in arrays.items()}
    checked = our_error(lambda: bnb.check_layer(PREFIX, names, fmt, headers, lambda p, m: (n_out, n_in),
                                                by_name.__getitem__), PREFIX)
    layer = checked or QuantizedLinear(PREFIX, n_in, n_out, names, state=state)
    lw = ours_or_finite(lambda: bnb.convert_layer(layer, arrays), (n_out, n_in), PREFIX)
    if lw is not None:
        assert np.array_equal(lw.dequantized(), _reference(layer, arrays))


def _reference(layer: QuantizedLinear, arrays: dict) -> np.ndarray:
    """bitsandbytes' dequantization written here: ``quant_map[q] * absmax`` (high nibble first), ``CB * SCB / 127``."""
    n_out, n_in = layer.out_features, layer.in_features
    if not layer.state:
        scale = (arrays["SCB"].astype(np.float32) * np.float32(1 / 127)).reshape(n_out, 1)
        return arrays["weight"].astype(np.float32) * scale
    packed = arrays["weight"].reshape(-1)
    codes = np.stack([packed >> 4, packed & 15], axis=-1).reshape(-1)
    absmax = arrays["weight.absmax"]
    if "nested_blocksize" in layer.state:
        nested = arrays["weight.nested_absmax"][np.arange(absmax.size) // layer.state["nested_blocksize"]]
        absmax = arrays["weight.nested_quant_map"][absmax] * nested + np.float32(layer.state["nested_offset"])
    w = arrays["weight.quant_map"][codes] * np.repeat(absmax.astype(np.float32), layer.state["blocksize"])
    return w.reshape(n_out, n_in)


def _valid(nested: bool = False, n_out: int = 16, n_in: int = 64, block: int = 64):
    """A valid 4-bit NF4 layer: ``(state, names, arrays)``."""
    state = _state("nf4", block, n_out, n_in, nested)
    rng = np.random.default_rng(0)
    n_blocks = n_out * n_in // block
    arrays = {"weight": rng.integers(0, 256, (n_out * n_in // 2, 1), dtype=np.uint8),
              "weight.quant_map": NF4_VALUES.astype(np.float32),
              "weight.absmax": rng.uniform(0.1, 1, n_blocks).astype(np.float32)}
    if nested:
        arrays.update({"weight.absmax": rng.integers(0, 256, n_blocks, dtype=np.uint8),
                       "weight.nested_absmax": np.ones(-(-n_blocks // 256), np.float32),
                       "weight.nested_quant_map": np.linspace(-1, 1, 256, dtype=np.float32)})
    names = {kind: f"{PREFIX}.{kind}" for kind in arrays}
    names["quant_state"] = f"{PREFIX}.weight.quant_state.bitsandbytes__nf4"
    return state, names, arrays


def _check(state, names: dict, arrays: dict, bits: int = 4):
    arrays = {**arrays, "quant_state": np.frombuffer(state, np.uint8) if isinstance(state, bytes) else
              np.frombuffer(json.dumps(state).encode(), np.uint8)} if bits == 4 else arrays
    by_name = {names[k]: a for k, a in arrays.items()}
    fmt = PrequantizedFormat("bitsandbytes", bits, -1, True, False, "nf4" if bits == 4 else "int8", "config.json")
    return bnb.check_layer(PREFIX, names, fmt, {n: header_of(a, ()) for n, a in by_name.items()},
                           lambda p, m: (16, 64), by_name.__getitem__)


@pytest.mark.parametrize("key, value, match", [
    ("nested_blocksize", 0, r"has 'nested_blocksize': 0, not a positive integer"),  # was ZeroDivisionError
    ("nested_blocksize", "x", r"has 'nested_blocksize': 'x', not a positive integer"),  # was ValueError from int()
    ("nested_offset", "x", r"has 'nested_offset': 'x', not a finite number"),  # was ValueError in the converter
    ("nested_offset", float("nan"), r"has 'nested_offset': nan, not a finite number"),  # was NaN weights
    ("shape", 5, r"gives shape 5, but config.json makes"),  # was TypeError: 'int' object is not iterable
    ("shape", ["a", "b"], r"gives shape \['a', 'b'\]"),  # was ValueError from int('a')
    ("blocksize", True, r"has no positive 'blocksize'"),  # was taken as a blocksize of 1
])
def test_found_by_fuzzing_odd_quant_states_are_named(key, value, match):
    state, names, arrays = _valid(nested=True)
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight\.quant_state\.bitsandbytes__nf4 {match}"):
        _check({**state, key: value}, names, arrays)


def test_found_by_fuzzing_a_deeply_nested_quant_state_is_named():
    """Before: RecursionError out of json.loads."""
    state, names, arrays = _valid()
    with pytest.raises(ExportError, match=r"quant_state\.bitsandbytes__nf4 is not bitsandbytes' JSON quant state"):
        _check(b"[" * 100_000, names, arrays)


@pytest.mark.parametrize("kind, index, value, match", [
    ("weight.absmax", 3, np.nan, r"weight\.absmax gives the scale nan \(at flat index 3\), which float16"),
    ("weight.absmax", 0, 1e6, r"weight\.absmax gives the scale 1000000\.0 \(at flat index 0\)"),  # inf in the IR
    ("weight.quant_map", 5, np.inf, r"weight\.quant_map holds non-finite values \(\[inf\]\)"),
])
def test_found_by_fuzzing_non_finite_or_huge_scales_are_refused(kind, index, value, match):
    """Before: the layer converted, and the IR held inf/NaN scales or look-up values (NaN weights)."""
    state, names, arrays = _valid()
    arrays[kind] = arrays[kind].copy()
    arrays[kind][index] = value
    layer = _check(state, names, arrays)
    with pytest.raises(ExportError, match=rf"{PREFIX}\.{match}"):
        bnb.convert_layer(layer, arrays)


def test_found_by_fuzzing_llm_int8_tensors():
    """Before: an empty weight_format was an IndexError, a [out] weight passed the header check (then a NumPy
    reshape error), and an SCB beyond float16 * 127 became an inf scale in the IR."""
    arrays = {"weight": np.ones((16, 64), np.int8), "SCB": np.full(16, 2.0, np.float32),
              "weight_format": np.zeros(0, np.uint8)}
    names = {kind: f"{PREFIX}.{kind}" for kind in arrays}
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight_format is \[\], not 0 \(row-major\)"):
        _check(None, names, arrays, bits=8)
    arrays["weight_format"] = np.zeros(1, np.uint8)
    with pytest.raises(ExportError, match=rf"{PREFIX}\.weight is I8 \[16\], but .* must be I8 \[16, 64\]"):
        _check(None, names, {**arrays, "weight": np.ones(16, np.int8)}, bits=8)
    layer = _check(None, names, arrays, bits=8)
    arrays["SCB"][2] = 1e7
    with pytest.raises(ExportError, match=rf"{PREFIX}\.SCB gives the scale 78740\.\d+ \(at flat index 2\)"):
        bnb.convert_layer(layer, arrays)
