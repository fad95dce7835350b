"""Per-step GTPO metrics for logging, named as they appear in verl's logger (``gtpo/...``)."""

from __future__ import annotations

from gtpo_plugin.advantages import GTPOTerms


def gtpo_metrics(terms: GTPOTerms) -> dict[str, float]:
    """Scalars describing one GTPO advantage computation.

    - ``gtpo/protected_token_frac``: valid tokens with λ = 0 (negative updates skipped);
    - ``gtpo/amplified_token_frac``: valid tokens with λ > 1;
    - ``gtpo/filtered_completion_frac``: non-empty completions dropped by the entropy filter (δ = 0);
    - ``gtpo/mean_completion_entropy``: mean ⟨H⟩_i over non-empty completions (nats);
    - ``gtpo/initial_entropy``: ⟨H⟩_ini in use (nats).
    Fractions and the mean are 0 for a batch without valid tokens.
    """
    nonempty = terms.lengths > 0
    mean_entropy = float(terms.completion_entropy[nonempty].double().mean()) if bool(nonempty.any()) else 0.0
    return {
        "gtpo/protected_token_frac": terms.protected_tokens / max(terms.valid_tokens, 1),
        "gtpo/amplified_token_frac": terms.amplified_tokens / max(terms.valid_tokens, 1),
        "gtpo/filtered_completion_frac": terms.filtered_completions / max(terms.nonempty_completions, 1),
        "gtpo/mean_completion_entropy": mean_entropy,
        "gtpo/initial_entropy": terms.initial_entropy,
    }
