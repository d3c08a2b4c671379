"""lungfuse.plugins.clinical: the built-in ``clinical`` modality (covariates).

The entry point names :mod:`lungfuse.plugins.clinical.plugin`, which imports only the
pydantic config and the plugin class; reading and fitting (pandas, pyarrow,
scikit-learn) live in :mod:`.covariates` and the encoder (torch) in :mod:`.encoders`,
both imported lazily. See docs/clinical.md.
"""
