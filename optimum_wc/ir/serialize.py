"""Write an IR whose largest constants are produced while it is written, never all held in memory.

Objective: the ``.bin`` that ``openvino.save_model(model, xml, compress_to_fp16=False)``
would write, byte for byte, when most constants' data does not exist yet.
OpenVINO's serializer writes each Constant's bytes in the order of
``model.get_ordered_ops()``, once per distinct content (an exact duplicate
points at the first copy's offset), and records ``offset``/``size`` in the
XML.  So:

1. :class:`OrderedBinWriter` takes the constants in that order, their bytes
   given by the caller (computed just in time for the ones still
   placeholders), deduplicates exactly, and streams them to the ``.bin``;
2. :func:`write_xml` has OpenVINO serialize the graph with its ``.bin``
   going to ``/dev/null`` through a symlink beside the XML (the placeholders'
   contents are irrelevant there; OpenVINO deletes the ``.bin`` path when the
   XML cannot be written, e.g. on a full disk, and run as root it would
   delete ``/dev/null`` itself),
   then puts the writer's offsets into the XML's ``Const`` layers, checking
   each size.

One exception to "each Constant in order": a node marked ``postponed_constant``
(the PyTorch frontend marks so the Transpose it puts on a weight, e.g.
transformers' MoE experts held ``[experts, in, out]``) is constant-folded by
the serializer and written as a Constant in its place, its own constant
inputs dropped.  :func:`fold_postponed_constants` makes that fold in the
graph first, so the graph is the one the IR file holds.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import ModelError

_SAMPLE = 4096  # bytes of each end hashed to find duplicate candidates, compared in full when keys collide


POSTPONED = "postponed_constant"  # rt_info key of nodes the serializer folds into a Constant


def fold_postponed_constants(model) -> list[str]:
    """Replace each ``postponed_constant`` node by the Constant the serializer would write; return their names.

    The Constant is ``node``'s value, evaluated from its constant inputs,
    under the node's friendly name and output names, as
    ``openvino.save_model`` writes it and ``read_model`` reads it back.
    """
    import openvino as ov
    from openvino import op as ov_op

    folded = []
    for node in model.get_ordered_ops():
        if POSTPONED not in node.get_rt_info():
            continue
        sources = [value.get_node() for value in node.input_values()]
        if node.get_output_size() != 1 or any(s.get_type_name() != "Constant" for s in sources):
            raise ModelError(f"{node.get_friendly_name()} is marked {POSTPONED} but does not take only constants; "
                             "OpenVINO's serializer could not fold it either (please report it to optimum-wc).")
        value = ov.Tensor(node.get_output_element_type(0), node.get_output_shape(0))
        if not node.evaluate([value], [s.get_tensor_view() for s in sources]):
            raise ModelError(f"OpenVINO cannot evaluate {node.get_friendly_name()} ({node.get_type_name()}), marked "
                             f"{POSTPONED}; please report it to optimum-wc.")
        const = ov_op.Constant(value, shared_memory=True)
        const.set_friendly_name(node.get_friendly_name())
        const.output(0).get_tensor().set_names(node.output(0).get_names())
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(const.output(0))
        folded.append(node.get_friendly_name())
    return folded


def ordered_constants(model) -> list:
    """The model's Constant nodes in the order OpenVINO's serializer writes them."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]


def constant_bytes(const) -> np.ndarray:
    """A Constant's data as the IR stores it (uint8 view, u4 packed)."""
    if const.get_byte_size() == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(const.get_tensor_view().data, dtype=np.uint8)


class OrderedBinWriter:
    """Appends constants' bytes to a ``.bin`` file, an exact duplicate of an earlier one written once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0
        self.offsets: list[int] = []  # per constant, in the order given
        self.sizes: list[int] = []
        self._by_key: dict[tuple, list[int]] = {}  # (size, sampled hash) -> offsets of distinct earlier blobs
        self._small: dict[int, bytes] = {}  # offset -> content of blobs up to _SAMPLE * 2 bytes

    def _key(self, data: np.ndarray) -> tuple:
        n = data.size
        head = zlib.crc32(data[:_SAMPLE])
        tail = zlib.crc32(data[max(0, n - _SAMPLE):]) if n > _SAMPLE else 0
        return n, head, tail

    def _same(self, offset: int, data: np.ndarray) -> bool:
        if offset in self._small:
            return self._small[offset] == data.tobytes()
        self.file.flush()
        with open(self.path, "rb") as f:
            f.seek(offset)
            step = 1 << 24
            for start in range(0, data.size, step):
                chunk = data[start : start + step]
                if f.read(chunk.size) != chunk.tobytes():
                    return False
        return True

    def write(self, data: np.ndarray) -> int:
        """Write one constant's bytes (or point at an identical earlier one); return its offset."""
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        key = self._key(data)
        for offset in self._by_key.get(key, ()):
            if self._same(offset, data):
                self.offsets.append(offset)
                self.sizes.append(data.size)
                return offset
        offset = self.offset
        self.file.write(memoryview(data))
        self.offset += data.size
        self._by_key.setdefault(key, []).append(offset)
        if data.size <= 2 * _SAMPLE:
            self._small[offset] = data.tobytes()
        self.offsets.append(offset)
        self.sizes.append(data.size)
        return offset

    def close(self) -> None:
        self.file.close()


_LAYER = re.compile(r'<layer id="\d+" name="[^"]*" type="([^"]+)"')
_DATA = re.compile(r'(<data [^>]*?offset=")(\d+)(" size=")(\d+)(")')


DISCARD = os.devnull  # where the serializer's own .bin goes (through a symlink: see write_xml)


def write_xml(model, xml_path: Path, offsets: list[int], sizes: list[int]) -> None:
    """Serialize ``model``'s XML with the ``.bin`` layout of ``offsets``/``sizes`` (one per Constant, in order).

    OpenVINO's serializer also writes a ``.bin``, unused here: it goes to
    :data:`DISCARD` through a symlink beside the XML, never to the device
    path itself, because the serializer deletes its ``.bin`` path when
    writing fails (a full disk) and would delete ``/dev/null`` when run as root.
    """
    import openvino as ov
    from openvino.passes import Manager, Serialize

    model.set_rt_info(ov.get_version(), "OpenVINO Runtime")  # as openvino.save_model writes it
    discard = Path(xml_path).with_name(f".{Path(xml_path).stem}.discarded.bin")
    if discard.is_symlink() or discard.exists():
        discard.unlink()
    os.symlink(DISCARD, discard)
    try:
        manager = Manager()
        manager.register_pass(Serialize(str(xml_path), str(discard)))
        manager.run_passes(model)
    finally:
        if discard.is_symlink():
            discard.unlink()
    lines = Path(xml_path).read_text(encoding="utf-8").split("\n")
    index, in_const = 0, False
    for i, line in enumerate(lines):
        layer = _LAYER.search(line)
        if layer:
            in_const = layer.group(1) == "Const"
            continue
        if in_const:
            match = _DATA.search(line)
            if match:
                if index >= len(offsets) or int(match.group(4)) != sizes[index]:
                    raise ModelError(f"internal error: constant {index} of the XML does not match the written .bin "
                                     "(size or count); please report it to optimum-wc.")
                lines[i] = line[: match.start(2)] + str(offsets[index]) + line[match.end(2):]
                index += 1
                in_const = False
    if index != len(offsets):
        raise ModelError(f"internal error: the XML has {index} constants, the .bin {len(offsets)}; "
                         "please report it to optimum-wc.")
    Path(xml_path).write_text("\n".join(lines), encoding="utf-8")
