"""lungfuse.plugins.genomics: the ``mutations`` and ``expression`` modalities.

Entry points name :mod:`lungfuse.plugins.genomics.plugin`, which imports only pydantic
models and the plugin classes; readers (pyarrow), feature builders (pandas) and the
encoders (torch) are imported lazily. See docs/genomics.md.
"""
