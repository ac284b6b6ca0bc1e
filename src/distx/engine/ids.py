"""A sweep's experiment ids, computed by rank 0 and the holders together.

An id is one SHA-256 call per experiment (script/grid.py: `Grid.id_column`), about 0.5-1 us
each in Python, which alone would be half of what a sweep may cost rank 0 per experiment.
Before a large sweep's first batch the holders would only wait, so rank 0 splits the grid
positions into one slice per live holder and sends each holder its slice; the ids come
back in slice order, identical to what `Grid.id_column` gives for all of them. Rank 0
computes none itself: its CPU is what one coordinator of thousands of holders runs short
of, and it sleeps while it waits. Every rank has the script, so a slice of grid positions
is all a holder needs.

    rank 0 (`experiment_ids`)                holder (`answer_ids`)
    IDS_REQUEST  IdsRequest            ->    grid.id_column(positions)
    on_reply                           <-    IDS_REPLY  IdsReply

A holder that dies before it answers (ULFM) has its slice computed by rank 0. Below
SHARED_FROM experiments rank 0 computes them alone, and no slice is smaller than SLICE
ids (4,096 holders would each get 100 of 409,600 ids, fewer than a message is worth):
a round of messages costs more.
"""

from __future__ import annotations

import itertools

from distx.engine.core import RankCore, drop_late
from distx.engine.protocol import IdsReply, IdsRequest, Kind
from distx.lazy import numpy as np
from distx.script.grid import Grid

SHARED_FROM = 20000
SLICE = 5000   # at least this many ids per rank that computes some
_numbers = itertools.count(1)


def experiment_ids(core: RankCore, grid: Grid, positions: np.ndarray) -> np.ndarray:
    """On rank 0: the ids of the grid's experiments at `positions`, in that order."""
    slices = len(positions) // SLICE
    holders = [rank for rank in core.info.plan.holders if rank not in core.lost][:slices]
    if len(positions) < SHARED_FROM or not holders:
        return grid.id_column(positions)
    return _Gathering(core, grid, positions, holders).run()


class _Gathering:
    """One round: a slice to each holder, the answers in order."""

    def __init__(self, core: RankCore, grid: Grid, positions: np.ndarray,
                 holders: list[int]) -> None:
        self.core = core
        self.grid = grid
        self.number = next(_numbers)
        self.slices = np.array_split(positions, len(holders))
        self.owner = dict(zip(holders, range(len(self.slices))))   # slices not yet in
        self.ids: list[np.ndarray | None] = [None] * len(self.slices)

    def run(self) -> np.ndarray:
        core = self.core
        core.register(Kind.IDS_REPLY, self.on_reply)
        core.on_lost.append(self.on_lost)
        try:
            for rank, index in self.owner.items():
                core.transport.send(rank, Kind.IDS_REQUEST,
                                    IdsRequest(self.number, self.slices[index]))
            for rank in list(self.owner):
                if rank in core.lost:         # lost while its request went out
                    self.on_lost(rank)
            core.wait_until(lambda: not self.owner, None,   # every slice is in
                            "the holders to compute experiment ids")
        finally:
            core.register(Kind.IDS_REPLY, drop_late)  # after a cancelled wait
            core.on_lost.remove(self.on_lost)
        return np.concatenate(self.ids)

    def on_reply(self, source: int, reply: IdsReply) -> None:
        if reply.number == self.number and source in self.owner:
            self.ids[self.owner.pop(source)] = reply.ids

    def on_lost(self, rank: int) -> None:
        """A holder died before it answered: its slice is computed here."""
        if rank in self.owner:
            index = self.owner.pop(rank)
            self.ids[index] = self.grid.id_column(self.slices[index])


def answer_ids(core: RankCore, grid: Grid, source: int, request: IdsRequest) -> None:
    """On a holder: the ids of the positions rank 0 sent."""
    core.transport.send(source, Kind.IDS_REPLY,
                        IdsReply(request.number, grid.id_column(request.positions)))
