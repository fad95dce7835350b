"""A GTPO-vs-GRPO training run on a laptop CPU, through verl's own algorithm layer (``gtpo-demo``).

The only part of ``gtpo_plugin`` that trains a model; it imports verl, transformers and matplotlib
(the ``verl`` extra), lazily, when ``main`` runs. ``gtpo_plugin`` itself never imports it.
"""

from gtpo_plugin.demo.cli import main

__all__ = ["main"]
