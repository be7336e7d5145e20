"""Smooth UCB over a partitioned continuous (pruning ratio, LoRA rank) space, one instance per device.

FedSpine (Yao et al. 2025) picks each device's pruning ratio and LoRA rank online with a smooth UCB (S-UCB)
over a partition of the continuous configuration space that is refined as evidence accumulates, with no prior
knowledge of the device. Our version:

* The space is ``[0, max_ratio] x ranks`` (allowed ranks, equally spaced on a log scale), normalised to
  [0, 1]^2. The continuous ratio axis is partitioned into intervals (initially ``grid`` per rank); a cell is
  (ratio interval, rank) and its arm is (interval centre, rank). Rank is discrete by nature (a LoRA rank is an
  integer, usually a power of two), so refinement splits the ratio axis only.
* Smooth estimates: a cell's mean and count borrow from nearby cells with a Gaussian kernel on centre
  distance (bandwidth ``bandwidth / 2**depth``: refined cells smooth less), so one pull informs its
  neighbours (the "smooth" in S-UCB):
  ``n~_c = sum_j K(c,j) n_j``, ``mu~_c = sum_j K(c,j) S_j / n~_c``,
  ``UCB_c = mu~_c + explore * sqrt(log(t+1) / n~_c)``; a cell with ``n~_c`` below 1e-9 is tried first.
* Refinement: a cell pulled ``split_after`` times (times 2 per extra depth level) is split into 2 halves
  that inherit its statistics at half its count each (zooming), down to ``max_depth``.
* Frontier (``frontier=True``): only cells already tried, or next to a tried one (same rank and touching ratio
  interval, or the neighbouring rank over an overlapping interval), are candidates. Exploration then grows
  outward from the first arm (the cheapest) instead of jumping to the far corner of the space: in a synchronous
  round one device exploring its most expensive arm makes everyone wait, so far jumps cost the whole fleet.
  Every cell is still reachable (the frontier grows whenever its UCB wins), so the regret argument of UCB holds.
* Infeasible arms (``feasible(ratio, rank)`` false: training would not fit the device's memory) are never
  chosen.

The reward is computed by the strategy (see :func:`strategies.fedspine.reward`) and passed to :meth:`update`.
State (cells, counts, sums, t) round-trips through :meth:`get_state` / :meth:`set_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Cell:
    lo: float  # normalised ratio interval
    hi: float
    rank_idx: int
    depth: int
    count: float = 0.0
    total: float = 0.0
    pulls: int = 0  # pulls since this cell was created (drives refinement)


class SmoothUCB:
    def __init__(self, *, max_ratio: float, ranks: list[int], grid: int = 2, bandwidth: float = 0.25,
                 explore: float = 0.5, split_after: int = 2, max_depth: int = 3, frontier: bool = False) -> None:
        if not ranks or max_ratio < 0:
            raise ValueError("need at least one rank and max_ratio >= 0")
        self.max_ratio, self.ranks = float(max_ratio), sorted(int(r) for r in ranks)
        self.bandwidth, self.explore = bandwidth, explore
        self.split_after, self.max_depth = split_after, max_depth
        self.frontier = frontier
        self.t = 0
        self.cells = [Cell(i / grid, (i + 1) / grid, k, 0) for k in range(len(self.ranks)) for i in range(grid)]

    # ------------------------------------------------------------------ arms
    def _centre(self, cell: Cell) -> np.ndarray:
        return np.array([(cell.lo + cell.hi) / 2, cell.rank_idx / max(len(self.ranks) - 1, 1)])

    def arm_of(self, cell: Cell) -> tuple[float, int]:
        return round((cell.lo + cell.hi) / 2 * self.max_ratio, 4), self.ranks[cell.rank_idx]

    def _kernel(self) -> np.ndarray:
        c = np.array([self._centre(cell) for cell in self.cells])
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        h = self.bandwidth / 2.0 ** np.array([cell.depth for cell in self.cells])  # finer cells smooth less
        return np.exp(-d2 / (2 * h[:, None] ** 2))

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(smoothed means, smoothed counts, UCB) per cell."""
        k = self._kernel()
        n = np.array([cell.count for cell in self.cells])
        s = np.array([cell.total for cell in self.cells])
        n_s = k @ n
        mu = np.divide(k @ s, n_s, out=np.zeros_like(n_s), where=n_s > 1e-9)
        bonus = self.explore * np.sqrt(math.log(self.t + 1) / np.maximum(n_s, 1e-9))
        return mu, n_s, np.where(n_s > 1e-9, mu + bonus, np.inf)

    def choose(self, feasible: Callable[[float, int], bool] | None = None) -> tuple[float, int] | None:
        """The arm of the feasible cell with the highest UCB; None if none fits.

        Ties (at the start every cell is untried, UCB infinite) go to the cheapest work -- lowest rank, then
        highest pruning ratio: knowing nothing of the device, its first round should not make it a straggler.
        """
        _, _, ucb = self.scores()
        tried = [c for c in self.cells if c.count > 0]
        options = [(i, self.arm_of(c)) for i, c in enumerate(self.cells) if self._open(c, tried)]
        options = [(i, arm) for i, arm in options if feasible is None or feasible(*arm)]
        if not options:
            return None
        best = max(ucb[i] for i, _ in options)
        tied = [arm for i, arm in options if ucb[i] >= best - 1e-12]
        return min(tied, key=lambda arm: (arm[1], -arm[0]))

    def _open(self, cell: Cell, tried: list[Cell]) -> bool:
        """Whether the frontier lets ``cell`` be chosen (always, without a frontier or before any pull)."""
        if not self.frontier or not tried or cell.count > 0:
            return True
        eps = 1e-9
        return any(
            (c.rank_idx == cell.rank_idx and (abs(c.hi - cell.lo) < eps or abs(cell.hi - c.lo) < eps))  # touching
            or (abs(c.rank_idx - cell.rank_idx) == 1 and c.lo < cell.hi - eps and cell.lo < c.hi - eps)  # overlap
            for c in tried)

    # ------------------------------------------------------------------ learning
    def _cell_of(self, arm: tuple[float, int]) -> int:
        ratio, rank = arm
        k = min(range(len(self.ranks)), key=lambda i: abs(math.log2(self.ranks[i]) - math.log2(rank)))
        x = ratio / self.max_ratio if self.max_ratio else 0.0
        same = [i for i, c in enumerate(self.cells) if c.rank_idx == k]
        return min(same, key=lambda i: abs((self.cells[i].lo + self.cells[i].hi) / 2 - x))

    def update(self, arm: tuple[float, int], reward: float) -> None:
        self.t += 1
        idx = self._cell_of(arm)
        cell = self.cells[idx]
        cell.count += 1
        cell.total += float(reward)
        cell.pulls += 1
        if cell.depth < self.max_depth and cell.pulls >= self.split_after * 2**cell.depth:
            self._split(idx)

    def _split(self, idx: int) -> None:
        cell = self.cells.pop(idx)
        mid = (cell.lo + cell.hi) / 2
        for lo, hi in ((cell.lo, mid), (mid, cell.hi)):
            self.cells.append(Cell(lo, hi, cell.rank_idx, cell.depth + 1, cell.count / 2, cell.total / 2))

    # ------------------------------------------------------------------ checkpoint / logging
    def get_state(self) -> dict:
        return {"t": self.t, "cells": [[c.lo, c.hi, c.rank_idx, c.depth, c.count, c.total, c.pulls]
                                       for c in self.cells]}

    def set_state(self, state: dict) -> None:
        self.t = int(state["t"])
        self.cells = [Cell(float(lo), float(hi), int(k), int(depth), float(n), float(s), int(p))
                      for lo, hi, k, depth, n, s, p in state["cells"]]

    def best_arm(self) -> tuple[float, int]:
        mu, n_s, _ = self.scores()
        visited = n_s > 1e-9
        idx = int(np.argmax(np.where(visited, mu, -np.inf))) if visited.any() else 0
        return self.arm_of(self.cells[idx])
