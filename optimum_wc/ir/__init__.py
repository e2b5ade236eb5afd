"""Every read and edit of an OpenVINO graph lives in this package.

``sites`` (which weights there are, reading them), ``decompression`` (the
compressed-weight subgraph, input reordering, LoRA adapter branches),
``absorbers`` (where AWQ's inverse scales go), ``probes`` (statistics models
and layer-wise pass boundaries), ``rt_info`` (what we record in the IR).
"""
