"""optimum-intel glue: ``OVModelForCausalLM``, ``export_model``, and the one hook into optimum-intel.

Nothing here is imported by ``import optimum_wc`` but :mod:`.hook`, which
only registers an import hook (optimum-intel itself loads on first use).
"""
