"""The engine <-> model seam: a padded ``Batch`` and its packed (padding-free) view.

Models never see strings, HTTP or futures: only these tensors. ``Packed`` lets a model run its
linear layers and MLPs on real tokens only (cost grows with real tokens, not with the longest
sequence) and re-pad just for attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    """Real tokens of a batch laid end to end, sequence after sequence (row-major order)."""

    input_ids: torch.Tensor  # [N] long, N = real tokens in the batch
    token_type_ids: torch.Tensor | None  # [N] long
    position_ids: torch.Tensor  # [N] long: 0.. within each sequence
    indices: torch.Tensor  # [N] long: where each real token sits in the flattened [B*T] grid
    cu_seqlens: torch.Tensor  # [B+1] long: sequence b owns packed rows cu[b]:cu[b+1]
    lengths: torch.Tensor  # [B] long
    key_mask: torch.Tensor  # [B, T] bool: True where a key is a real token
    batch_size: int
    seq_len: int
    full: bool  # no padding anywhere: pad/unpad are free views, attention needs no mask
    # Attention groups: (first packed row, end row, the packed view of those sequences alone). When
    # set, attention runs per group, each padded only to its own longest sequence (see
    # ``Batch.packed``); everything else still runs on the whole packed batch.
    groups: tuple[tuple[int, int, Packed], ...] = ()
    # A VL model's image tiles [T, 3, S, S], the batch's images in row order (None: no image).
    images: torch.Tensor | None = None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, T, ...], zeros at padding."""
        if self.full:
            return x.view(self.batch_size, self.seq_len, *x.shape[1:])
        out = x.new_zeros((self.batch_size * self.seq_len, *x.shape[1:]))
        out[self.indices] = x
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...]."""
        if self.full:
            return x.reshape(self.batch_size * self.seq_len, *x.shape[2:])
        return x.reshape(self.batch_size * self.seq_len, *x.shape[2:])[self.indices]

    def to(self, device: torch.device) -> Packed:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        moved["groups"] = tuple((s, e, g.to(device)) for s, e, g in self.groups)
        return Packed(**moved)  # type: ignore[arg-type]  # the same fields, tensors moved


@dataclass(frozen=True)
class Batch:
    """Token ids of B sequences, padded to T. Padding may be on either side."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long/bool, 1 = real token
    token_type_ids: torch.Tensor | None = None  # [B, T] long

    @classmethod
    def from_sequences(
        cls,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]] | None = None,
        pad_id: int = 0,
        left: bool = False,
    ) -> Batch:
        """Pad lists of ids into a batch (right padding unless ``left``)."""
        if not ids:
            raise ValueError("a batch needs at least one sequence")
        width = max(len(s) for s in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        types = torch.zeros((len(ids), width), dtype=torch.long) if type_ids is not None else None
        for row, seq in enumerate(ids):
            n = len(seq)
            span = slice(width - n, width) if left else slice(0, n)
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
            if types is not None and type_ids is not None:
                types[row, span] = torch.tensor(type_ids[row], dtype=torch.long)
        return cls(input_ids, mask, types)

    def packed(self, group_ratio: float = 0.0, alone: bool = False) -> Packed:
        """The packed view. With ``group_ratio`` (0 < r < 1), consecutive sequences are grouped for
        attention while each is at least r x the length of its group's first: attention costs
        length^2, so one [B, T_max] grid over a batch of mixed lengths spends much of it on padding
        (length-sorted 4,096-token CPU batches ran their attention 1.07-1.41x faster grouped at 0.9,
        bench/layer_parts.py). Batches cut by the engine are sorted longest first, so groups are tight.

        ``alone``: every sequence is its own group, so its attention runs on a [1, length] grid whatever
        else is in the batch. This is what makes CPU scores batch-invariant: on a padded, masked grid a
        sequence's attention rounded differently (up to 3.6e-7), and even among sequences of one
        length the CPU flash kernel gave batch-dependent bits at some head sizes."""
        mask = self.attention_mask.bool()
        bsz, width = mask.shape
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every sequence in a batch needs at least one token")
        indices = mask.reshape(-1).nonzero(as_tuple=False).squeeze(1)
        cu = torch.zeros(bsz + 1, dtype=torch.long)
        cu[1:] = lengths.cumsum(0)
        seq_index = torch.repeat_interleave(torch.arange(bsz), lengths)
        position_ids = torch.arange(int(cu[-1])) - cu[:-1][seq_index]
        flat_types = None
        if self.token_type_ids is not None:
            flat_types = self.token_type_ids.reshape(-1)[indices]
        return Packed(
            input_ids=self.input_ids.reshape(-1)[indices],
            token_type_ids=flat_types,
            position_ids=position_ids,
            indices=indices,
            cu_seqlens=cu,
            lengths=lengths,
            key_mask=mask,
            batch_size=bsz,
            seq_len=width,
            full=int(cu[-1]) == bsz * width,
            groups=(
                self.attention_groups(mask, lengths.tolist(), cu.tolist(), group_ratio, alone)
                if alone or 0 < group_ratio < 1
                else ()
            ),
        )

    def attention_groups(
        self, mask: torch.Tensor, lengths: list[int], cu: list[int], ratio: float, alone: bool = False
    ) -> tuple[tuple[int, int, Packed], ...]:
        # Greedy: a sequence opens a new group when it is shorter than ratio x the group's first, or
        # longer than it (an unsorted batch still groups correctly, only less tightly).
        starts, first = [0], lengths[0]
        for i in range(1, len(lengths)):
            if alone or lengths[i] < ratio * first or lengths[i] > first:
                starts.append(i)
                first = lengths[i]
        if len(starts) == 1 and (not alone or len(lengths) == 1):
            return ()
        groups = []
        for s, e in zip(starts, starts[1:] + [len(lengths)]):
            cols = mask[s:e].any(0).nonzero().squeeze(1)  # real columns, left or right padding
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            sub = Batch(
                self.input_ids[s:e, c0:c1],
                self.attention_mask[s:e, c0:c1],
                None if self.token_type_ids is None else self.token_type_ids[s:e, c0:c1],
            )
            groups.append((cu[s], cu[e], sub.packed()))
        return tuple(groups)
