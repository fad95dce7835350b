"""Conflict tokens and their weights λ (GTPO_SPEC "λ — conflict tokens").

A token of completion i at position t conflicts when the same token id stands at the same position
in a completion of the same group whose advantage has the opposite sign (only completions with
A ≠ 0 take part). Positions are counted over each completion's own model tokens (``response_mask``
= 1): in multi-turn completions the tool or user tokens between the model's turns are skipped, so the
k-th generated token is compared with the k-th generated token (GTPO_SPEC "Completions with tokens
masked inside"). They are compared left-aligned (from the first model token) and, in
``prefix_suffix`` mode, also right-aligned (from each completion's own last model token).

Algorithm: rows are laid out in a ``[groups, G_max]`` grid (a stable sort by group id); for each
member j = 0..G_max-1 the whole grid is compared with member j by broadcasting, keeping matches
where the two have opposite signs. This costs O(G_max·B·K) time and O(B·K) memory for a window of
K positions — never O(V·L) like per-vocabulary counters. In ``prefix_suffix`` mode only the leading and trailing runs
matter, so the window starts small and doubles only while some run fills it; typical runs are a
few tokens, making the cost close to O(B) plus one pass over ``[B, L]`` to write the weights.

Masks with holes: :class:`ModelPositions` maps model-token positions to columns (one O(B·L) pass
over the mask, O(N) memory for N model tokens, built only when some row is not a leading block);
the windows gather their tokens through it and λ is written back at the original columns, so the
windowed cost above is unchanged. ``any`` mode compacts the tokens into a ``[B, L]`` copy instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gtpo_plugin._validation import (
    GroupIndex,
    ModelPositions,
    check_response_mask,
    check_token_ids,
    check_vector,
    group_ids,
)
from gtpo_plugin.config import check_amplification, check_conflict_mode

_FIRST_WINDOW = 16


@dataclass
class ConflictRuns:
    """Where λ ≠ 1, in compact form (all tensors ``[B]`` unless noted).

    ``factor`` is λ on a conflict token of that row: w for A > 0, 0 for A < 0, 1 for A = 0;
    ``lengths`` counts model tokens. In ``prefix_suffix`` mode ``prefix``/``suffix`` hold the run
    lengths in model tokens and ``model_positions`` maps them to columns; in ``any`` mode
    ``positions`` is the bool ``[B, L]`` map of conflict tokens at their original columns; in
    ``none`` mode all are empty.
    """

    factor: torch.Tensor
    lengths: torch.Tensor
    prefix: torch.Tensor | None = None
    suffix: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    model_positions: ModelPositions | None = None

    def scale_(self, values: torch.Tensor) -> torch.Tensor:
        """Multiply ``values`` ``[B, L]`` in place by λ at conflict positions (1 elsewhere); returns it.

        Cost: O(B + number of conflict tokens) in ``prefix_suffix`` mode, O(B·L) in ``any`` mode.
        """
        if self.positions is not None:
            values.mul_(torch.where(self.positions, self.factor[:, None].to(values.dtype), 1.0))
            return values
        if self.prefix is None or self.suffix is None or self.model_positions is None:
            return values
        # A token in both runs is scaled twice (λ = w² or 0), as in the authors' implementation.
        for rows, at in (_prefix_coordinates(self.prefix), _suffix_coordinates(self.suffix, self.lengths)):
            if rows.numel():
                cols = self.model_positions.column(rows, at)
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
        responses: LongTensor ``[B, L]`` of token ids (tool tokens included), right-padded as verl does.
        response_mask: ``[B, L]`` bool/int/float 0/1: 1 on the model's own tokens, 0 on padding and on
            tool or user tokens inside multi-turn completions (positions skip them).
        index: length-B group id per row (verl's ``uid``: numpy array of str/int, list or tensor).
        advantages: ``[B]`` sequence-level advantages A_i; only their sign is used.
        amplification: w ≥ 1; λ of a conflict token in a positive completion (w² when it is in
            both the prefix and the suffix run).
        mode: ``"prefix_suffix"``, ``"any"`` (every conflicting left-aligned position) or
            ``"none"`` (λ = 1 on every model token).

    Returns:
        λ ∈ {0, 1, w, w²} on model tokens, 0 on every other column. Time O(G_max·B·K) + O(B·L),
        memory O(B·L) (see module doc).
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

    layout = GroupLayout.of(groups.to(device), sign)
    model = ModelPositions.of(mask, lengths)
    if mode == "any":
        runs.positions = _any_position_conflicts(responses, mask, model, layout)
        return runs

    runs.model_positions = model
    runs.prefix = _leading_run(lambda k: _left_aligned(responses, mask, model, k), layout, lengths, length)
    runs.suffix = _leading_run(lambda k: _right_aligned(responses, model, k), layout, lengths, length)
    return runs


def _any_position_conflicts(responses: torch.Tensor, mask: torch.Tensor, model: ModelPositions,
                            layout: GroupLayout) -> torch.Tensor:
    """Bool ``[B, L]`` conflict map of ``any`` mode at the original columns.

    With holes, each row's model tokens are moved to the left of a ``[B, L]`` copy, compared there, and
    the map is moved back to their columns (two index copies of N model tokens). Extra cost O(B·L)
    time and memory.
    """
    if model.flat is None:
        return layout.conflicts(responses, mask)
    batch_size, width = responses.shape
    valid = torch.arange(width, device=responses.device)[None, :] < model.lengths[:, None]
    slots = valid.reshape(-1).nonzero().squeeze(1)  # flat index of row i's k-th model token once compacted
    compact = responses.new_zeros(batch_size * width)
    compact[slots] = responses.reshape(-1)[model.flat]
    found = layout.conflicts(compact.view(batch_size, width), valid)
    conflict = torch.zeros(batch_size * width, dtype=torch.bool, device=responses.device)
    conflict[model.flat] = found.reshape(-1)[slots]
    return conflict.view(batch_size, width)


def _left_aligned(tokens: torch.Tensor, mask: torch.Tensor, model: ModelPositions,
                  width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``width`` model tokens of each row, in order, with their validity (``[B, width]`` each)."""
    if model.flat is None:
        return tokens[:, :width], mask[:, :width]
    ahead = torch.arange(width, device=tokens.device)[None, :]
    return model.take(tokens, ahead), ahead < model.lengths[:, None]


@dataclass
class GroupLayout:
    """Where each row sits in a ``[groups, G_max]`` grid, so that a group's members can be compared
    by broadcasting instead of gathering partners row by row.

    ``rows`` lists the batch rows sorted by group; ``slot[r]`` is row r's cell in the flattened grid;
    ``group_starts[g]`` indexes ``rows`` at group g's first member. Empty cells have sign 0.
    """

    rows: torch.Tensor
    slot: torch.Tensor
    group_starts: torch.Tensor
    sign: torch.Tensor
    group_size: int

    @classmethod
    def of(cls, groups: torch.Tensor, sign: torch.Tensor) -> GroupLayout:
        rows = torch.argsort(groups, stable=True)
        counts = torch.bincount(groups)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(rows)
        rank[rows] = torch.arange(rows.numel(), device=rows.device) - starts[groups[rows]]
        group_size = int(counts.max())
        group_starts = torch.cat([starts, counts.sum().reshape(1)])
        return cls(rows, groups * group_size + rank, group_starts, sign, group_size)

    def conflicts(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, K]``: the token equals the one in the same column of an opposite-sign group member.

        Groups are processed in chunks whose grid holds at most ~2·B rows, so memory stays O(B·K)
        even when group sizes are uneven; time O(G_max·B·K).
        """
        n_groups, size = self.group_starts.numel() - 1, self.group_size
        if tokens.numel() and int(tokens.max()) < 2**31 and int(tokens.min()) >= -(2**31):
            tokens = tokens.to(torch.int32)  # halves the memory traffic of the comparisons
        conflict = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
        chunk = max(1, 2 * self.rows.numel() // size)
        for first in range(0, n_groups, chunk):
            last = min(first + chunk, n_groups)
            rows = self.rows[int(self.group_starts[first]) : int(self.group_starts[last])]
            slots = self.slot[rows] - first * size
            cells = (last - first) * size
            grid_tokens = tokens.new_zeros((cells, tokens.shape[1]))
            grid_tokens[slots] = tokens[rows]
            grid_valid = valid.new_zeros((cells, valid.shape[1]))
            grid_valid[slots] = valid[rows]
            grid_sign = self.sign.new_zeros(cells)
            grid_sign[slots] = self.sign[rows]
            found = _grid_conflicts(grid_tokens.view(last - first, size, -1), grid_valid.view(last - first, size, -1),
                                    grid_sign.view(last - first, size, 1))
            conflict[rows] = found.view(cells, -1)[slots]
        return conflict


def _grid_conflicts(tokens: torch.Tensor, valid: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Conflicts inside ``[groups, G, K]`` grids: member j is compared with every member at once."""
    found = torch.zeros_like(valid)
    for j in range(tokens.shape[1]):
        opposite = sign * sign[:, j : j + 1] < 0  # [groups, G, 1]
        if not bool(opposite.any()):
            continue
        match = tokens == tokens[:, j : j + 1]
        match &= valid[:, j : j + 1]
        match &= opposite
        found |= match
    return found & valid


def _leading_run(window, layout: GroupLayout, lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Length of each row's unbroken run of conflicts from column 0 of ``window(k)``.

    The window doubles while some row's run fills it and the row is longer than the window.
    """
    width = min(_FIRST_WINDOW, length)
    while True:
        tokens, valid = window(width)
        conflict = layout.conflicts(tokens, valid)
        run = torch.cumprod(conflict.to(torch.int32), dim=1).sum(dim=1)
        if width >= length or not bool(((run == width) & (lengths > width)).any()):
            return run
        width = min(2 * width, length)


def _right_aligned(tokens: torch.Tensor, model: ModelPositions, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``width`` model tokens of each row, last token first, with their validity."""
    back = torch.arange(width, device=tokens.device)
    valid = back[None, :] < model.lengths[:, None]
    positions = (model.lengths[:, None] - 1 - back[None, :]).clamp(min=0)
    return model.take(tokens, positions), valid


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
