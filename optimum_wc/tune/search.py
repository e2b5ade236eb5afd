"""The search policy of ``optimum-wc tune``: which candidate to run next, given the results so far.

Objective: the smallest weights file whose perplexity is within the budget
(``max_ppl``), found with few compressions, the expensive data-aware ones
only where they can win.  Pure logic, no model: :class:`Search` takes
outcomes and proposes candidates.  Layouts are ordered by predicted size and
quality is taken to grow with size (more bits, smaller groups).

1. **Data-free, bisection.**  Round to nearest (seconds per layout) on the
   middle of the layouts still open: within the budget, the bound moves
   down; over it, up.  A few runs give the smallest data-free pass.
2. **Data-aware, ascending scan** of the 4-bit layouts smaller than the best
   so far.  A layout's round-to-nearest result (run now if the bisection
   skipped it) says how much of its gap to the float model a method must
   close: ``need = (ppl_rtn - max_ppl) / (ppl_rtn - ppl_float)``.  The scan
   stops at the first layout that passes, so every probe but the last is a
   failure, and only the strongest method can settle a failure: each layout
   gets the strongest method (the last of ``methods``: GPTQ + SE + act-order + GPTAQ) alone.  A layout whose
   need exceeds the closure the strongest method has reached so far (plus
   ``CLOSURE_SLACK`` for noise), or ``max_closure`` before it ran, fails
   without a run: the gain of a method is roughly a share of the gap,
   whatever the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

from .space import DATA_AWARE_METHODS, Candidate, Layout

MAX_CLOSURE = 0.95  # AutoRound, the strongest 4-bit method measured here, closes ~0.85 of the gap
CLOSURE_SLACK = 0.05  # perplexity noise between neighbouring runs, as a share of the gap


@dataclass
class Outcome:
    """What one candidate gave: its size and quality (or why it failed)."""

    candidate: Candidate
    size_bytes: int | None = None
    perplexity: float | None = None
    top1_agreement: float | None = None
    compress_seconds: float | None = None
    error: str | None = None
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.perplexity is not None and math.isfinite(self.perplexity)

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"name": c.name, "layout": c.layout.name, "method": c.method, "mode": c.layout.mode,
                "group_size": c.layout.group_size, "ratio": c.layout.ratio, "size_bytes": self.size_bytes,
                "perplexity": self.perplexity, "top1_agreement": self.top1_agreement,
                "compress_seconds": self.compress_seconds, "error": self.error, "cached": self.cached, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Outcome":
        layout = Layout(data["mode"], int(data["group_size"]), float(data["ratio"]))
        known = {"size_bytes", "perplexity", "top1_agreement", "compress_seconds", "error"}
        return cls(Candidate(layout, data["method"]), **{k: data.get(k) for k in known})


class Search:
    """Proposes candidates; see the module docstring for the policy."""

    def __init__(self, predicted: Mapping[Layout, int], float_ppl: float, max_ppl: float, *,
                 max_bytes: int | None = None, data_aware: bool = True,
                 methods: Sequence[str] = DATA_AWARE_METHODS, max_closure: float = MAX_CLOSURE):
        if not max_ppl > float_ppl:
            raise ValueError(f"the perplexity budget {max_ppl} must exceed the float model's {float_ppl}")
        self.predicted = dict(predicted)
        self.float_ppl, self.max_ppl, self.max_bytes = float_ppl, max_ppl, max_bytes
        self.data_aware, self.max_closure = data_aware, max_closure
        self.strongest = methods[-1] if methods else None
        # ratio < 1 sizes are estimates: allow 1 % above --max-size, the measured size decides
        self.order = sorted((lay for lay, b in self.predicted.items() if max_bytes is None or b <= max_bytes * 1.01),
                            key=lambda lay: (self.predicted[lay], lay))
        self.outcomes: dict[str, Outcome] = {}

    # -- results ------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.candidate.name] = outcome

    def within(self, o: Outcome | None) -> bool:
        """Within the perplexity budget and the size limit."""
        return (o is not None and o.ok and o.perplexity <= self.max_ppl
                and (self.max_bytes is None or (o.size_bytes is not None and o.size_bytes <= self.max_bytes)))

    def best(self) -> Outcome | None:
        """The smallest candidate within the budget (then the lowest perplexity, then the fastest)."""
        good = [o for o in self.outcomes.values() if self.within(o)]
        return min(good, key=lambda o: (o.size_bytes, o.perplexity, o.compress_seconds or 0.0), default=None)

    def _size(self, layout: Layout) -> float:
        rtn = self._rtn(layout)
        return rtn.size_bytes if rtn is not None and rtn.size_bytes else self.predicted[layout]

    def _open(self) -> list[Layout]:
        best = self.best()
        return [lay for lay in self.order if best is None or self._size(lay) < best.size_bytes]

    def _rtn(self, layout: Layout) -> Outcome | None:
        return self.outcomes.get(Candidate(layout).name)

    # -- proposals ----------------------------------------------------------

    def propose(self, n: int, running: Collection[Candidate] = ()) -> list[Candidate]:
        """Up to ``n`` candidates to run now (none: wait for ``running``, or the search is over)."""
        busy = {c.name for c in running}
        out, bisecting = self._bisect_rtn(n, busy)
        if bisecting:
            return out  # the scan starts once the bisection has settled the best data-free layout
        return self._scan(n, busy) if self.data_aware and self.strongest else []

    def done(self, running: Collection[Candidate] = ()) -> bool:
        return not running and not self.propose(1)

    def _bisect_rtn(self, n: int, busy: set[str]) -> tuple[list[Candidate], bool]:
        """Data-free bisection: probes spread over the layouts between the largest failure and the best pass.

        Returns the probes and whether the bisection is still going (layouts in that interval not run yet).
        """
        failed = [i for i, lay in enumerate(self.order)
                  if self._rtn(lay) is not None and not self.within(self._rtn(lay))]
        lo = max(failed, default=-1)
        open_ = [lay for lay in self._open() if self.order.index(lay) > lo and self._rtn(lay) is None]
        free = [lay for lay in open_ if Candidate(lay).name not in busy]
        k = min(n, len(free))
        picks = sorted({free[(j + 1) * len(free) // (k + 1)] for j in range(k)}, key=self.order.index)
        return [Candidate(lay) for lay in picks], bool(open_)

    def need(self, layout: Layout) -> float:
        """Share of the layout's round-to-nearest gap to the float model a method must close."""
        rtn = self._rtn(layout)
        return (rtn.perplexity - self.max_ppl) / (rtn.perplexity - self.float_ppl)

    def closure(self, o: Outcome) -> float | None:
        """Share of the round-to-nearest gap ``o`` closed on its layout."""
        rtn = self._rtn(o.candidate.layout)
        if not (o.ok and rtn is not None and rtn.ok) or rtn.perplexity <= self.float_ppl:
            return None
        return (rtn.perplexity - o.perplexity) / (rtn.perplexity - self.float_ppl)

    def reach(self) -> float:
        """The largest share of the gap the strongest method may close: the most it closed so far plus slack."""
        seen = [c for o in self.outcomes.values() if o.candidate.method == self.strongest
                and (c := self.closure(o)) is not None]
        return min(self.max_closure, max(seen) + CLOSURE_SLACK) if seen else self.max_closure

    def _scan(self, n: int, busy: set[str]) -> list[Candidate]:
        """Data-aware ascending scan: for each open 4-bit layout, its round to nearest, then the strongest method."""
        out = []
        for lay in self._open():
            if len(out) >= n:
                break
            rtn = self._rtn(lay)
            strong = Candidate(lay, self.strongest)
            if strong.name in busy or Candidate(lay).name in busy:
                continue  # (with n > 1 the next layouts run meanwhile)
            if lay.mode.startswith("int8") or strong.name in self.outcomes:
                continue
            if rtn is None:
                out.append(Candidate(lay))
            elif rtn.ok and not self.within(rtn) and rtn.perplexity > self.float_ppl and self.need(lay) <= self.reach():
                out.append(strong)
        return out
