"""gtpo-plugin's Hydra search-path plugin: ``+algorithm=gtpo`` on verl's own entry points, with nothing else to set.

Hydra imports every module of the ``hydra_plugins`` namespace package when any Hydra app starts, and lets each
:class:`~hydra.plugins.search_path_plugin.SearchPathPlugin` add folders to the app's config search path. This one
adds the package's config folder, ``gtpo_plugin/hydra_config``, whose ``algorithm`` group holds ``gtpo.yaml`` and
``gtpo_paper.yaml``; the user adds no ``--config-path``, ``hydra.searchpath`` or environment variable.

The host comes first, since this runs in every Hydra app, verl's or not:

- the folder is appended after the app's own (``hydra.searchpath`` folders come later still), so an app's own
  ``algorithm/gtpo.yaml`` wins, and a config that does not select the group composes exactly as without it;
- the folder is found as files next to this module (a wheel installs both into one site folder), without
  importing ``gtpo_plugin``, whose core imports torch;
- when the files are missing (a partial install) the plugin logs one warning and leaves the search path as it was.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

logger = logging.getLogger(__name__)

#: The name Hydra shows for the folder (``--info searchpath``, ``hydra.runtime.config_sources``).
PROVIDER = "gtpo-plugin"
#: The package's config folder, next to this module's ``hydra_plugins`` folder.
CONFIG_DIR = Path(__file__).absolute().parent.parent / "gtpo_plugin" / "hydra_config"


@functools.cache
def config_dir(folder: Path = CONFIG_DIR) -> Path | None:
    """``folder`` when it holds the group (``algorithm/gtpo.yaml``); else None, after one warning per process."""
    marker = folder / "algorithm" / "gtpo.yaml"
    try:
        if marker.is_file():
            return folder
        problem = f"{marker} is missing"
    except OSError as error:  # e.g. a folder that cannot be read
        problem = f"{marker} cannot be read ({error})"
    logger.warning("gtpo-plugin's Hydra config group is not installed completely: %s; +algorithm=gtpo is "
                   "unavailable until gtpo-plugin is reinstalled, everything else runs as without it", problem)
    return None


class GTPOSearchPathPlugin(SearchPathPlugin):
    """Appends gtpo-plugin's config folder to every Hydra app's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folder = config_dir()
        if folder is not None:
            search_path.append(provider=PROVIDER, path=f"file://{folder}")
