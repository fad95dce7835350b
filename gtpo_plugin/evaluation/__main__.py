"""``python -m gtpo_plugin.evaluation``: the same command as ``gtpo-eval``."""

import sys

from gtpo_plugin.evaluation.cli import main

sys.exit(main())
