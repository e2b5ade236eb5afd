"""Side-by-side benchmark of optimum-wc and NNCF weight compression.

Run ``python -m benchmarks.run --help``.  Modules:

* :mod:`benchmarks.configs`  - the named compression configs and the targets;
* :mod:`benchmarks.models`   - preparing the checkpoint and its float IR (cached);
* :mod:`benchmarks.worker`   - the subprocess entry (compress one config, evaluate one IR);
* :mod:`benchmarks.metrics`  - perplexity, top-1 agreement and generation speed in OpenVINO;
* :mod:`benchmarks.parity`   - constant-by-constant comparison of two compressed IRs;
* :mod:`benchmarks.report`   - the markdown written to BENCHMARKS.md;
* :mod:`benchmarks.run`      - the one command that ties them together.
"""
