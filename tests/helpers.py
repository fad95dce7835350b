"""What several test modules share: the names of the metrics GTPO logs (verl-free).

The stand-ins for verl's GPU workers are in ``tests/verl_adapter/doubles.py`` and the TransferQueue
fixture in ``tests/verl_adapter/conftest.py``.
"""

from __future__ import annotations

# The five per-step metrics that verl's logger shows for a GTPO run (gtpo_plugin.metrics.gtpo_metrics).
METRIC_KEYS = frozenset({
    "gtpo/protected_token_frac",
    "gtpo/amplified_token_frac",
    "gtpo/filtered_completion_frac",
    "gtpo/mean_completion_entropy",
    "gtpo/initial_entropy",
})
