"""The compression engine: plan each layer's precision, run the per-layer steps, write the IR.

``compress`` (``compress_model``), ``planning`` (ignored scope, group sizes,
mixed precision), ``sensitivity`` (how layers are ranked), ``awq`` (AWQ
applied to the graph), ``steps`` (the per-layer algorithms, a registry keyed
by the config), ``layerwise`` (passes on the partially compressed model),
``threads`` (the order-keeping thread map).
"""

from .compress import compress_model

__all__ = ["compress_model"]
