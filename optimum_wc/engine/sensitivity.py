"""Layer sensitivity scores for mixed precision (lower score: 4 bits first).

With ``e8`` the INT8 per-channel quantization error of the weight and ``x`` the
layer's input over calibration samples (per-sample values averaged):

* WEIGHT_QUANTIZATION_ERROR: ``1 / (max_row mean (W - Q8(W))^2 + eps)`` (data-free)
* MEAN_ACTIVATION_VARIANCE: ``that * mean_c var_t(x)``
* MAX_ACTIVATION_VARIANCE: ``that * max_c var_t(x)``
* MEAN_ACTIVATION_MAGNITUDE: ``that * mean_c max_t |x|``
* HESSIAN_INPUT_ACTIVATION: ``mean_c E[x_c^2] * ||W - Q8(W)||_F`` (Hessian trace per channel times the 8-bit noise)

These follow NNCF's criteria.  Embeddings have no data-aware score and get the
lowest one, so with ``all_layers`` they are the first to take 4 bits.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..calibration.statistics import ActivationStats
from ..config import CompressWeightsMode, SensitivityMetric
from ..ir.sites import WeightSite, read_weight
from ..quant.lowering import int8_error_sensitivity, quantize

LOWEST = float("-inf")


def int8_frobenius_error(weight: np.ndarray, axis: int) -> float:
    cw = quantize(np.asarray(weight, dtype=np.float32), CompressWeightsMode.INT8_ASYM, -1, axis)
    return float(np.sqrt(cw.sq_error))


_ACTIVATION_TERM: dict[SensitivityMetric, Callable[[ActivationStats], float]] = {
    SensitivityMetric.MEAN_ACTIVATION_VARIANCE: lambda st: float(np.mean(st.sample_mean_var)),
    SensitivityMetric.MAX_ACTIVATION_VARIANCE: lambda st: float(np.mean(st.sample_max_var)),
    SensitivityMetric.MEAN_ACTIVATION_MAGNITUDE: lambda st: float(np.mean(st.sample_mean_absmax)),
}


def sensitivity_function(
    metric: SensitivityMetric, stats: Mapping[str, ActivationStats] | None
) -> Callable[[WeightSite], float]:
    """The score of a weight site under ``metric`` (stats are needed for every metric but the data-free one)."""
    if metric is SensitivityMetric.WEIGHT_QUANTIZATION_ERROR:
        return lambda site: int8_error_sensitivity(read_weight(site), site.reduction_axis)
    if stats is None:
        def missing(site: WeightSite) -> float:
            raise ValueError(f"{metric.value} needs activation statistics")

        return missing

    def score(site: WeightSite) -> float:
        if site.kind != "matmul" or site.name not in stats:
            return LOWEST
        st = stats[site.name]
        w = read_weight(site)
        if metric is SensitivityMetric.HESSIAN_INPUT_ACTIVATION:
            return float(np.mean(st.mean_sq)) * int8_frobenius_error(w, site.reduction_axis)
        return int8_error_sensitivity(w, site.reduction_axis) * _ACTIVATION_TERM[metric](st)

    return score
