"""Calibration: data in, activation statistics out.

``samples`` (anything a user holds -> token-id samples), ``runners``
(compiled stateful and statistics models), ``statistics`` (per-input moments,
Grams and row subsamples reduced in the graph), ``hessians`` (per-layer
``X^T X`` pass by pass on the partially compressed model).
"""
