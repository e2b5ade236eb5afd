"""The ordinary paths print no third-party noise, and take a folder as ``str`` or ``pathlib.Path``.

``from_pretrained`` of our class and of optimum-intel's own class (after
``import optimum_wc``), on a float checkpoint, a GPTQ checkpoint and a saved
IR folder, under HF_HUB_OFFLINE (conftest sets it): everything printed
(capfd), logged (caplog) or warned is captured, and none of the known
messages may appear: optimum-intel's failed hub-cache guess on a local folder
("Could not infer ...", "[Errno 2] ... refs/main", "Path.replace() takes 2
positional arguments"), the tracer's warnings and transformers' deprecation
notices about arguments optimum-intel passes.  Our own warnings still come
through.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

import optimum_wc
from optimum_wc import WeightCompressionConfig

GPTQ_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gptqmodel" / "gptq-v1-g32-sym"
NOISE = (
    "Could not infer whether the model was already converted",
    "No such file or directory",
    "Path.replace()",
    "TracerWarning",
    "might cause the trace to be incorrect",
    "`torch_dtype` is deprecated",
    "`loss_type=None` was set in the config",
    "`cache_position` is deprecated",
)
KINDS = {"str": str, "Path": Path}


@pytest.fixture()
def heard(capfd, caplog):
    """A function giving everything printed, logged or warned so far in the test."""
    from transformers.utils import logging as tlog

    logging.Logger.warning_once.cache_clear()  # transformers says some things once per process: make them say it again
    tlog.get_logger("transformers").warning_once.cache_clear()
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def text() -> str:
            out, err = capfd.readouterr()
            warned = [f"{w.category.__name__}: {w.message}" for w in caught]
            return "\n".join([out, err, caplog.text, *warned])

        yield text


def assert_quiet(text: str) -> None:
    found = [n for n in NOISE if n in text]
    assert not found, f"noise {found} in:\n{text[-3000:]}"


def _classes():
    from optimum.intel import OVModelForCausalLM as Stock

    return {"ours": optimum_wc.OVModelForCausalLM, "optimum-intel": Stock}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", ["ours", "optimum-intel"])
def test_float_checkpoint_exports_quietly(llama_dir, heard, kind, cls):
    model = _classes()[cls].from_pretrained(KINDS[kind](llama_dir), export=True, compile=False)
    assert model.model.get_parameters()  # an IR was made
    assert_quiet(heard())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", ["ours", "optimum-intel"])
def test_gptq_checkpoint_exports_quietly(heard, kind, cls):
    from optimum_wc.ir.rt_info import read_prequantized_info

    model = _classes()[cls].from_pretrained(KINDS[kind](GPTQ_FIXTURE), export=True, compile=False)
    assert read_prequantized_info(model.model)["layers"]
    assert_quiet(heard())


@pytest.mark.parametrize("kind", KINDS)
def test_compress_save_and_reload_quietly(llama_dir, tmp_path, heard, kind):
    config = WeightCompressionConfig(mode="int4_asym", group_size=32)
    model = optimum_wc.OVModelForCausalLM.from_pretrained(KINDS[kind](llama_dir), export=True, compile=False,
                                                          quantization_config=config)
    saved = tmp_path / "saved"
    model.save_pretrained(KINDS[kind](saved))
    for cls in _classes().values():
        again = cls.from_pretrained(KINDS[kind](saved), compile=False)
        assert again._wc_config == config  # our config, read back from the folder by both classes
    stock = _classes()["optimum-intel"].from_pretrained(KINDS[kind](saved), compile=False)
    stock.save_pretrained(KINDS[kind](tmp_path / "saved-again"))
    assert (tmp_path / "saved-again" / "openvino_model.xml").is_file()
    assert_quiet(heard())


def test_a_checkpoint_without_export_is_exported_as_online_and_said_so(llama_dir, heard):
    """optimum-intel's own class on a checkpoint folder without export=True: exported (as optimum-intel does when
    online) with one line saying so, where HF_HUB_OFFLINE used to make it try to read a missing IR."""
    model = _classes()["optimum-intel"].from_pretrained(Path(llama_dir), compile=False)
    assert model.model.get_parameters()
    text = heard()
    assert_quiet(text)
    assert f"{llama_dir} holds no OpenVINO IR: exporting it (export=True)" in text


@pytest.mark.parametrize("kind", KINDS)
def test_folder_entry_points_take_str_and_path_quietly(llama_dir, llama_ir, tmp_path, heard, kind):
    """export_model, compress_ir_folder, the config file, the report and tune's checks, with str and with Path."""
    from optimum_wc.export.pipeline import compress_ir_folder
    from optimum_wc.report import report_from_dir
    from optimum_wc.tune import TuneError, TuneSettings, tune_model

    path = KINDS[kind]
    config = WeightCompressionConfig(mode="int8_sym")
    model = optimum_wc.export_model(path(llama_dir), path(tmp_path / "exported"), config)
    assert model.wc_config == config and (tmp_path / "exported" / "openvino_model.xml").is_file()
    report = compress_ir_folder(path(llama_ir.parent), path(tmp_path / "compressed"), config)
    assert report["config"]["mode"] == "int8_sym"
    assert WeightCompressionConfig.from_json(path(tmp_path / "compressed" / "optimum_wc_config.json")) == config
    assert report_from_dir(path(tmp_path / "compressed"))["compressed"]
    settings = TuneSettings(max_ppl_increase=0.01, work_dir=path(tmp_path / "work"), data_aware=False)
    with pytest.raises(TuneError, match="already compressed by optimum-wc"):
        tune_model(path(tmp_path / "compressed"), path(tmp_path / "tuned"), settings)
    assert_quiet(heard())
