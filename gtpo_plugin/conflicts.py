"""Conflict tokens and their weights λ (GTPO_SPEC "λ — conflict tokens").

A token of completion i at position t conflicts when the same token id stands at the same position
in a completion of the same group whose advantage has the opposite sign (only completions with
A ≠ 0 take part). Positions are compared left-aligned (from the first token) and, in
``prefix_suffix`` mode, also right-aligned (from each completion's own last valid token).

Algorithm: rows are grouped by a stable sort of the group ids; for partner offset j = 0..G_max-1
every row is compared with the j-th member of its own group, only where the two have opposite
signs. This costs O(G_max·B·K) time and O(B·K) memory for a window of K positions — never
O(V·L) like per-vocabulary counters. In ``prefix_suffix`` mode only the leading and trailing runs
matter, so the window starts small and doubles only while some run fills it; typical runs are a
few tokens, making the cost close to O(B) plus one pass over ``[B, L]`` to write the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gtpo_plugin._validation import GroupIndex, check_response_mask, check_token_ids, check_vector, group_ids
from gtpo_plugin.config import check_amplification, check_conflict_mode

_FIRST_WINDOW = 16


@dataclass
class ConflictRuns:
    """Where λ ≠ 1, in compact form (all tensors ``[B]`` unless noted).

    ``factor`` is λ on a conflict token of that row: w for A > 0, 0 for A < 0, 1 for A = 0.
    In ``prefix_suffix`` mode ``prefix``/``suffix`` hold the run lengths; in ``any`` mode
    ``positions`` is the bool ``[B, L]`` map of conflict tokens; in ``none`` mode both are empty.
    """

    factor: torch.Tensor
    lengths: torch.Tensor
    prefix: torch.Tensor | None = None
    suffix: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def scale_(self, values: torch.Tensor) -> torch.Tensor:
        """Multiply ``values`` ``[B, L]`` in place by λ at conflict positions (1 elsewhere); returns it.

        Cost: O(B + number of conflict tokens) in ``prefix_suffix`` mode, O(B·L) in ``any`` mode.
        """
        if self.positions is not None:
            values.mul_(torch.where(self.positions, self.factor[:, None].to(values.dtype), 1.0))
            return values
        if self.prefix is None or self.suffix is None:
            return values
        # A token in both runs is scaled twice (λ = w² or 0), as in the authors' implementation.
        for rows, cols in (_prefix_coordinates(self.prefix), _suffix_coordinates(self.suffix, self.lengths)):
            if rows.numel():
                values[rows, cols] = values[rows, cols] * self.factor.to(values.device, values.dtype)[rows]
        return values

    def token_counts(self) -> tuple[int, int]:
        """(protected tokens with λ = 0, amplified tokens with λ > 1), counted once per token."""
        if self.positions is not None:
            per_row = self.positions.sum(dim=1)
        elif self.prefix is not None and self.suffix is not None:
            per_row = torch.minimum(self.prefix + self.suffix, self.lengths)  # size of the union of both runs
        else:
            return 0, 0
        protected = int(per_row[self.factor == 0].sum())
        amplified = int(per_row[self.factor > 1].sum())
        return protected, amplified


def conflict_weights(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    index: GroupIndex,
    advantages: torch.Tensor,
    *,
    amplification: float = 2.0,
    mode: str = "prefix_suffix",
) -> torch.Tensor:
    """λ weights of GTPO, float32 ``[B, L]``; 0 on padding.

    Args:
        responses: LongTensor ``[B, L]`` of token ids, right-padded (as verl produces).
        response_mask: ``[B, L]`` bool/int/float, 1 on valid tokens, a leading block per row.
        index: length-B group id per row (verl's ``uid``: numpy array of str/int, list or tensor).
        advantages: ``[B]`` sequence-level advantages A_i; only their sign is used.
        amplification: w ≥ 1; λ of a conflict token in a positive completion (w² when it is in
            both the prefix and the suffix run).
        mode: ``"prefix_suffix"``, ``"any"`` (every conflicting left-aligned position) or
            ``"none"`` (λ = 1 on every valid token).

    Returns:
        λ ∈ {0, 1, w, w²} on valid tokens. Time O(G_max·B·K) + O(B·L), memory O(B·L) (see module doc).
    """
    check_token_ids("responses", responses)
    mask, lengths = check_response_mask(response_mask, responses.shape)
    runs = find_conflicts(responses, response_mask, index, advantages, amplification=amplification, mode=mode,
                          checked_mask=(mask, lengths))
    return runs.scale_(mask.to(torch.float32))


def find_conflicts(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    index: GroupIndex,
    advantages: torch.Tensor,
    *,
    amplification: float = 2.0,
    mode: str = "prefix_suffix",
    checked_mask: tuple[torch.Tensor, torch.Tensor] | None = None,
    groups: torch.Tensor | None = None,
) -> ConflictRuns:
    """Locate conflict tokens; see :func:`conflict_weights` for the arguments.

    ``checked_mask`` (the result of ``check_response_mask``) and ``groups`` (ids 0..n-1) may be
    passed by callers that computed them, to avoid a second pass over the batch.
    """
    check_token_ids("responses", responses)
    check_amplification(amplification)
    check_conflict_mode(mode)
    batch_size, length = responses.shape
    mask, lengths = checked_mask or check_response_mask(response_mask, responses.shape)
    if groups is None:
        groups = group_ids(index, batch_size)
    check_vector("advantages", advantages, batch_size)
    if bool(torch.isnan(advantages).any()):
        raise ValueError("advantages holds NaN; the sign of each completion's advantage must be defined")

    device = responses.device
    sign = torch.sign(advantages.detach()).to(device=device, dtype=torch.int8)
    factor = torch.where(sign > 0, float(amplification), torch.where(sign < 0, 0.0, 1.0)).to(torch.float32)
    runs = ConflictRuns(factor=factor, lengths=lengths)
    if mode == "none" or batch_size == 0 or length == 0 or not bool((sign != 0).any()):
        return runs

    partners = _group_partners(groups.to(device), sign)
    if mode == "any":
        runs.positions = _conflicts_in_window(responses, mask, sign, partners)
        return runs

    runs.prefix = _leading_run(lambda k: (responses[:, :k], mask[:, :k]), sign, partners, lengths, length)
    runs.suffix = _leading_run(lambda k: _right_aligned(responses, lengths, k), sign, partners, lengths, length)
    return runs


def _group_partners(groups: torch.Tensor, sign: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each offset j, the rows whose j-th group member has the opposite sign, and that member.

    Returns a list of (rows, partner_rows) LongTensor pairs; O(G_max·B) time and memory.
    """
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups)
    starts = torch.cumsum(counts, 0) - counts
    row_start, row_count = starts[groups], counts[groups]
    pairs = []
    for offset in range(int(counts.max())):
        has_member = offset < row_count
        partner = order[torch.where(has_member, row_start + offset, 0)]
        opposite = has_member & (sign * sign[partner] < 0)
        rows = opposite.nonzero().squeeze(1)
        if rows.numel():
            pairs.append((rows, partner[rows]))
    return pairs


def _conflicts_in_window(
    tokens: torch.Tensor, valid: torch.Tensor, sign: torch.Tensor, partners: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Bool ``[B, K]``: the token matches the same column of an opposite-sign group member."""
    conflict = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    for rows, partner in partners:
        matches = (tokens[rows] == tokens[partner]) & valid[partner]
        conflict[rows] |= matches
    return conflict & valid & (sign != 0)[:, None]


def _leading_run(window, sign, partners, lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Length of each row's unbroken run of conflicts from column 0 of ``window(k)``.

    The window doubles while some row's run fills it and the row is longer than the window.
    """
    width = min(_FIRST_WINDOW, length)
    while True:
        tokens, valid = window(width)
        conflict = _conflicts_in_window(tokens, valid, sign, partners)
        run = torch.cumprod(conflict.to(torch.int32), dim=1).sum(dim=1)
        if width >= length or not bool(((run == width) & (lengths > width)).any()):
            return run
        width = min(2 * width, length)


def _right_aligned(tokens: torch.Tensor, lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``width`` tokens of each row, last token first, with their validity."""
    back = torch.arange(width, device=tokens.device)
    valid = back[None, :] < lengths[:, None]
    columns = (lengths[:, None] - 1 - back[None, :]).clamp(min=0)
    return tokens.gather(1, columns), valid


def _prefix_coordinates(run: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_coordinates(run, lambda rows, offsets: offsets)


def _suffix_coordinates(run: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_coordinates(run, lambda rows, offsets: lengths[rows] - 1 - offsets)


def _run_coordinates(run: torch.Tensor, column_of) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of every token inside the runs; O(total run length)."""
    rows = torch.repeat_interleave(torch.arange(run.numel(), device=run.device), run)
    if rows.numel() == 0:
        return rows, rows
    starts = torch.cumsum(run, 0) - run
    offsets = torch.arange(rows.numel(), device=run.device) - starts[rows]
    return rows, column_of(rows, offsets)
