"""lungfuse core: plugin registry and contracts, configuration, cohort, pipeline, CLI.

Nothing here imports a plugin by module name: plugins are found through the
``lungfuse.modalities``, ``lungfuse.fusion`` and ``lungfuse.commands`` entry points.
"""

from lungfuse.core.contracts import PLUGIN_API_VERSION
from lungfuse.core.errors import LungfuseError

__all__ = ["PLUGIN_API_VERSION", "LungfuseError"]
