"""``tune_model``: find the smallest compressed model within a perplexity budget, and export it.

Steps: the float IR (exported once, or the IR folder given), its perplexity
and next-token argmax on the held-out text, the calibration samples, the
predicted size of every layout; then :class:`~optimum_wc.tune.search.Search`
proposes candidates that a runner compresses and evaluates; each result is
cached under the hash of its config in the work folder, so a second run with
the same model, text and data resumes where the first stopped.  The chosen
candidate's folder becomes the output, with the table of every candidate and
the plot beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, OptimumWCError
from ..layout import IR_BIN, IR_XML, move_into_place, staging_dir
from ..version import __version__
from .runner import LocalRunner, RayRunner
from .search import Outcome, Search
from .settings import TuneSettings
from .space import Candidate, Layout, float_weight_bytes, layouts, plan_signature, predicted_bytes
from .table import write_outputs

logger = logging.getLogger("optimum_wc")
MANIFEST = "tune.json"


class TuneError(OptimumWCError):
    """No candidate met the budget, or the tune could not run."""


@dataclass
class TuneResult:
    output: Path
    chosen: Outcome
    outcomes: list[Outcome]
    float_perplexity: float
    max_perplexity: float
    stopped_early: bool
    seconds: float


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class _Work:
    """The work folder: float IR, tokens, calibration samples, statistics, cached results, kept candidates."""

    def __init__(self, root: Path):
        self.root = root
        self.results, self.candidates, self.jobs = root / "results", root / "candidates", root / "jobs"
        for d in (root, self.results, self.candidates, self.jobs):
            d.mkdir(parents=True, exist_ok=True)

    def check_manifest(self, manifest: dict[str, Any], say: Callable[[str], None]) -> None:
        """Cached results of another model, text or calibration data are dropped."""
        path = self.root / MANIFEST
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is not None and old != manifest:
            say(f"{self.root} holds results of another model, text or calibration data: starting afresh.")
            for d in (self.results, self.candidates):
                shutil.rmtree(d)
                d.mkdir()
        path.write_text(json.dumps(manifest, indent=1, sort_keys=True))

    def cached(self, key: str) -> dict[str, Any] | None:
        path = self.results / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def store(self, key: str, outcome: Outcome) -> None:
        tmp = self.results / f"{key}.json.tmp"
        tmp.write_text(json.dumps(outcome.to_dict(), indent=1))
        tmp.replace(self.results / f"{key}.json")


def _check_float_ir(model: str | Path) -> None:
    """An IR folder given as the model must be float: candidates are compressed from it."""
    path = Path(model)
    if path.is_dir() and (path / IR_XML).is_file():
        import openvino as ov

        from ..ir.rt_info import read_rt_info

        if read_rt_info(ov.Core().read_model(path / IR_XML)) is not None:
            raise TuneError(f"{path} was already compressed by optimum-wc; pass the float IR or the Transformers "
                            "checkpoint it was made from.")


def _float_ir(model: str | Path, work: _Work, trust_remote_code: bool, allow_pickle: bool, say) -> Path:
    """The float IR folder: ``model`` itself when it is one, else exported once into the work folder."""
    from ..export.pipeline import export_folder

    path = Path(model)
    if path.is_dir() and (path / IR_XML).is_file():
        return path
    target = work.root / "float"
    if not (target / IR_XML).is_file():
        say(f"Exporting the float model {model} (once; kept in {work.root})")
        export_folder(model, target, None, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return target


def _reference(float_ir: Path, tokens: np.ndarray, window: int, work: _Work) -> tuple[float, Path, int]:
    """The float model's perplexity, its argmax file (cached) and its weights' size."""
    from ..evaluation import evaluate_many

    key = _sha(tokens.tobytes() + str(window).encode() + str(float_ir.resolve()).encode())
    info, argmax = work.root / f"float-{key}.json", work.root / f"float-{key}.npy"
    if not (info.is_file() and argmax.is_file()):
        result = evaluate_many({"float": float_ir}, tokens, window=window, keep_argmax=True)["float"]
        np.save(argmax, result.argmax)
        info.write_text(json.dumps({"perplexity": result.perplexity}))
    return json.loads(info.read_text())["perplexity"], argmax, (float_ir / IR_BIN).stat().st_size


def _calibration(float_ir: Path, settings: TuneSettings, tokenizer, work: _Work) -> Path | None:
    """The calibration samples as token ids (``calibration.npz``), made once."""
    if not settings.data_aware:
        return None
    path = work.root / "calibration.npz"
    spec = json.dumps([str(settings.dataset or "auto"), settings.num_samples, settings.sample_length])
    marker = work.root / "calibration.spec"
    if path.is_file() and marker.is_file() and marker.read_text() == spec:
        return path
    import openvino as ov

    from ..calibration.samples import prepare_samples

    data = "auto" if settings.dataset is None else str(settings.dataset)
    model = ov.Core().read_model(float_ir / IR_XML) if data.lower() == "auto" else None
    samples = prepare_samples(data, tokenizer, settings.num_samples, settings.sample_length, ov_model=model)
    np.savez(path, **{str(i): np.asarray(s, dtype=np.int64) for i, s in enumerate(samples)})
    marker.write_text(spec)
    return path


def _predicted_sizes(float_ir: Path) -> dict[Layout, int]:
    import openvino as ov

    from ..ir.sites import find_weight_sites

    sites, _ = find_weight_sites(ov.Core().read_model(float_ir / IR_XML))
    other = (float_ir / IR_BIN).stat().st_size - float_weight_bytes(sites)
    out, seen = {}, set()
    for layout in layouts():  # larger group sizes first: of two layouts planned alike, the first one stays
        try:
            signature = plan_signature(sites, layout)
            if signature not in seen:
                seen.add(signature)
                out[layout] = predicted_bytes(sites, layout, other)
        except ConfigError as exc:  # e.g. a group size that divides no layer with fallback error
            logger.info("Layout %s left out: %s", layout.name, exc)
    return out


def tune_model(model: str | Path, output: str | Path, settings: TuneSettings, *, progress: bool = False,
               say: Callable[[str], None] | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False) -> TuneResult:
    """Export to ``output`` the smallest model within ``settings``' budget; see :class:`TuneSettings`.

    ``trust_remote_code`` and ``allow_pickle``: as in :func:`~optimum_wc.export.pipeline.export_folder`.
    """
    from ..calibration.samples import load_tokenizer
    from ..evaluation import load_text, sample_text, tokenize_prefix

    say = say or logger.info
    start = time.monotonic()
    output = Path(output)
    # first: a Ray address that does not answer is reported before minutes of export and evaluation
    _check_float_ir(model)
    runner = RayRunner(settings.ray, settings.jobs if settings.jobs > 1 else None) if settings.ray else \
        LocalRunner(settings.jobs)
    work = _Work(Path(settings.work_dir) if settings.work_dir else output.parent / f"{output.name}.tune")
    float_ir = _float_ir(model, work, trust_remote_code, allow_pickle, say)
    tokenizer = load_tokenizer(float_ir)
    text = load_text(settings.text) if settings.text else sample_text()
    tokens = tokenize_prefix(tokenizer, text, settings.tokens)
    if len(tokens) < settings.window:
        raise ConfigError(f"the evaluation text has {len(tokens)} tokens, fewer than one window of {settings.window}; "
                          "pass a longer --text or a smaller --window.")
    float_ppl, argmax, float_size = _reference(float_ir, tokens, settings.window, work)
    max_ppl = float_ppl * (1 + settings.max_ppl_increase)
    calibration = _calibration(float_ir, settings, tokenizer, work)
    work.check_manifest({"float_ir": str(float_ir.resolve()), "eval": _sha(tokens.tobytes()), "window": settings.window,
                         "calibration": _sha(calibration.read_bytes()) if calibration else None,
                         "optimum_wc": __version__}, say)
    say(f"Float model: perplexity {float_ppl:.3f}; budget {max_ppl:.3f} (+{100 * settings.max_ppl_increase:g} %)"
        + (f", at most {settings.max_size_mb:g} MiB" if settings.max_size_mb else ""))
    search = Search(_predicted_sizes(float_ir), float_ppl, max_ppl, max_bytes=settings.max_size_bytes,
                    data_aware=calibration is not None)
    # what the configs record as their calibration data (the samples themselves reach the jobs tokenised)
    calib_fields = {"subset_size": settings.num_samples, "sample_length": settings.sample_length,
                    "dataset": str(settings.dataset or "auto")}
    base_job = {"float_ir": str(float_ir), "calibration": str(calibration) if calibration else None,
                "eval_tokens": str(work.root / "eval_tokens.npy"), "reference_argmax": str(argmax),
                "window": settings.window, "statistics_dir": str(work.root / "statistics")}
    np.save(work.root / "eval_tokens.npy", tokens)
    order: list[Outcome] = []
    stopped = _run_search(runner, search, work, settings, base_job, calib_fields, order, progress, say, start)
    summary = _summary(search, order, settings, float_ppl, max_ppl, float_size, text_source(settings), len(tokens),
                       calib_fields)
    best = search.best()
    if best is None:
        write_outputs(summary, work.root)
        closest = min((o for o in order if o.ok), key=lambda o: o.perplexity, default=None)
        hint = (f" the best perplexity was {closest.perplexity:.3f} ({closest.candidate.name}, "
                f"+{100 * (closest.perplexity / float_ppl - 1):.2f} %)." if closest else "")
        raise TuneError(f"no candidate within the budget (perplexity <= {max_ppl:.3f}"
                        + (f", size <= {settings.max_size_mb:g} MiB" if settings.max_size_mb else "") + f"):{hint} "
                        f"Raise --max-ppl-increase or --max-size{', or --time-budget' if stopped else ''}; the table "
                        f"of candidates is in {work.root}.")
    _materialize(best, work, output, calib_fields, base_job, summary)
    if not settings.keep_work:
        shutil.rmtree(work.root, ignore_errors=True)
    return TuneResult(output, best, order, float_ppl, max_ppl, stopped, time.monotonic() - start)


def text_source(settings: TuneSettings) -> str:
    return str(settings.text) if settings.text else "the built-in sample (Pride and Prejudice, chapters 1-4)"


def _job(candidate: Candidate, base: dict[str, Any], calib: dict[str, Any], work: _Work) -> tuple[str, dict]:
    """The candidate's cache key and its job (see :func:`~optimum_wc.tune.runner.run_candidate`)."""
    key = candidate.key(calib)
    job = {k: v for k, v in base.items() if k != "statistics_dir"}
    job.update(config=candidate.config_dict(calib), out=str(work.candidates / key))
    if candidate.data_aware:  # one cache per method (their statistics differ); the layouts of a method share it
        name = f"{candidate.method}-r{int(candidate.layout.ratio < 1)}.npz"
        job["statistics_path"] = str(Path(base["statistics_dir"]) / name)
    return key, job


def _run_search(runner, search: Search, work: _Work, settings: TuneSettings, base_job: dict, calib: dict,
                order: list[Outcome], progress: bool, say, start: float) -> bool:
    """Propose, run and record candidates until the search is over; True if the time budget stopped it."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="Tune", unit="candidate")
    kept: dict[str, str] = {}  # candidate name -> key of a kept candidate folder (the best so far)
    keys: dict[str, str] = {}  # candidate name -> cache key, of the candidates running
    try:
        while True:
            remaining = None if settings.time_budget is None else settings.time_budget - (time.monotonic() - start)
            if remaining is not None and remaining <= 0:
                if runner.running or not search.done():
                    say(f"Time budget of {settings.time_budget:g} s reached: stopping with the best found.")
                    return True
                return False
            hit = False
            for candidate in search.propose(runner.capacity, runner.running) if runner.capacity > 0 else []:
                key, job = _job(candidate, base_job, calib, work)
                cached = work.cached(key)
                if cached is not None:
                    outcome = Outcome.from_dict(cached)
                    outcome.cached, hit = True, True
                    _record(search, outcome, order, work, kept, key, bar, say)
                    continue
                say(f"Trying {candidate.name}")
                runner.submit(candidate, job, work.jobs / f"{key}.json")
                keys[candidate.name] = key
            if hit:
                continue
            if not runner.running:
                return False
            for candidate, figures in runner.wait(timeout=remaining):
                key = keys.pop(candidate.name)
                known = {"size_bytes", "perplexity", "top1_agreement", "compress_seconds", "error"}
                outcome = Outcome(candidate, **{k: figures.get(k) for k in known},
                                  extra={k: v for k, v in figures.items() if k not in known})
                if outcome.error is None or not outcome.error.startswith("the worker process failed"):
                    work.store(key, outcome)  # a crash or kill is not a result: it runs again next time
                _record(search, outcome, order, work, kept, key, bar, say)
    finally:
        runner.cancel()
        if bar is not None:
            bar.close()


def _record(search: Search, outcome: Outcome, order: list[Outcome], work: _Work, kept: dict[str, str], key: str,
            bar, say) -> None:
    """Record ``outcome``; keep the folder of the best candidate only (a 7B candidate is gigabytes)."""
    search.record(outcome)
    order.append(outcome)
    best = search.best()
    kept[outcome.candidate.name] = key
    for name, k in list(kept.items()):
        if best is None or name != best.candidate.name:
            shutil.rmtree(work.candidates / k, ignore_errors=True)
            del kept[name]
    o = outcome
    line = (f"{o.candidate.name}: failed ({o.error})" if not o.ok else
            f"{o.candidate.name}: {o.size_bytes / 2**20:.2f} MiB, perplexity {o.perplexity:.3f}"
            + (" (cached)" if o.cached else f", {o.compress_seconds:.1f} s")
            + (" - within the budget" if search.within(o) else ""))
    say(line)
    if bar is not None:
        bar.update(1)
        if best is not None:
            mib = best.size_bytes / 2**20
            bar.set_postfix_str(f"best {best.candidate.name} {mib:.1f} MiB ppl {best.perplexity:.2f}")


def _summary(search: Search, order: list[Outcome], settings: TuneSettings, float_ppl: float, max_ppl: float,
             float_size: int, source: str, n_tokens: int, calib: dict[str, Any]) -> dict[str, Any]:
    best = search.best()
    return {
        "float": {"perplexity": float_ppl, "size_bytes": float_size},
        "max_ppl_increase": settings.max_ppl_increase, "max_perplexity": max_ppl,
        "max_size_bytes": settings.max_size_bytes, "eval_text": source, "eval_tokens": n_tokens,
        "window": settings.window, "chosen": best.candidate.name if best else None,
        "chosen_config": best.candidate.config_dict(calib) if best else None,
        "candidates": [o.to_dict() for o in order],
    }


def _materialize(best: Outcome, work: _Work, output: Path, calib: dict[str, Any], base_job: dict[str, Any],
                 summary: dict[str, Any]) -> None:
    """Move the chosen candidate's folder to ``output`` (compressed again if it was not kept), tables beside it."""
    from ..evaluation import ir_size
    from .runner import compress_candidate

    key, job = _job(best.candidate, base_job, calib, work)
    folder = work.candidates / key
    if not (folder / IR_XML).is_file():  # a Ray task's folder on another node, or a resumed run's
        compress_candidate(job)  # deterministic: the bytes that were measured
        if ir_size(folder) != best.size_bytes:
            raise TuneError(f"compressing {best.candidate.name} again gave {ir_size(folder)} bytes, not the "
                            f"{best.size_bytes} it gave during the search; delete {work.root} and tune again.")
    with staging_dir(output) as tmp:
        shutil.move(str(folder), str(tmp / "out"))
        write_outputs(summary, tmp / "out")
        move_into_place(tmp / "out", output)
