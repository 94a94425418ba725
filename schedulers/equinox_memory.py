"""Equinox's memory-aware admission: admit while the running requests' future KV peak fits the cache.

Each running request holds a *reservation*: its prompt plus a high quantile of its output (at least
what it has generated).  If every request grows to its reservation and then frees its KV, the
most the batch holds at once is ``Charges.peak_kv``; a new request reserving ``m`` tokens raises
that peak by at most ``m``, so admitting it while ``m <= limit - peak`` keeps the peak within
``limit``.  The limit is the cache times ``1 + overcommit``, the overcommit adapted as TCP adapts
its window: up by ``OVERCOMMIT_STEP`` at a completion while memory holds back the lowest-HF head
(``widen``), back to 0 at every preemption.  Without the overcommit, fixed-length workloads form
cohorts that finish together and leave the cache a quarter empty (docs/EQUINOX.md).

The peak is computed only when a decision needs it: ``fits`` first tries the sum of the
reservations (a bound on the peak), and the peak is cached until the batch changes.
"""

from __future__ import annotations

from schedulers.equinox_charges import Charges

OVERCOMMIT_STEP = 0.02  # additive increase of the overcommit, per completion while memory binds
INF = float("inf")


class MemoryAdmission:
    def __init__(self, charges: Charges, max_overcommit: float, enabled: bool = True) -> None:
        self.charges = charges
        self.max_overcommit = max_overcommit
        self.enabled = enabled
        self.kv_capacity: float | None = None  # set by the engine (Equinox.bind_engine); None: off
        self.overcommit = 0.0  # how far the peak may pass the cache, as a share of it
        self.reserved = 0.0  # the sum of the running requests' reservations: a bound on the peak
        self.running = 0
        # The future peak (None: recompute it, as a completion, a preemption, a resumption or a
        # request outgrowing its reservation moved it); ``loose``: an upper bound of it, raised by
        # the admissions since it was computed, until the next step.
        self._peak: float | None = 0.0
        self._loose = False

    # -- the decision ------------------------------------------------------------------
    def limit(self) -> float | None:
        """How high the future KV peak may go (None: memory-aware admission is off or nothing runs)."""
        if not self.enabled or self.kv_capacity is None or not self.running:
            return None
        return self.kv_capacity * (1.0 + self.overcommit)

    def room(self) -> float:
        """KV tokens a new admission may reserve (inf: off, or nothing runs): the limit less the peak."""
        limit = self.limit()
        if limit is None:
            return INF
        if self._peak is None:
            self._peak = self.charges.peak_kv()
        return limit - self._peak

    def fits(self, need: float) -> bool:
        """Whether a request reserving ``need`` tokens fits: ``need <= room()``, tried first against
        the sum of the reservations to spare computing the peak."""
        limit = self.limit()
        return limit is None or need <= limit - self.reserved or need <= self.room()

    def widen(self) -> None:
        """Memory held back the lowest-HF head at a completion: let the peak pass the cache a little more."""
        self.overcommit = min(self.max_overcommit, self.overcommit + OVERCOMMIT_STEP)

    @property
    def can_widen(self) -> bool:
        return self.overcommit < self.max_overcommit

    # -- what moves the peak -----------------------------------------------------------
    def admitted(self, reserve: float) -> None:
        self.reserved += reserve
        if self._peak is not None:
            self._peak += reserve  # an upper bound of the new peak, until the next step recomputes it
            self._loose = True
        self.running += 1

    def step(self) -> None:
        """A step ran: an upper bound from admissions is recomputed when next needed."""
        if self._loose:
            self._peak, self._loose = None, False

    def grew(self, tokens: float) -> None:
        """Running requests outgrew their reservations by ``tokens`` in all (their reservations grew)."""
        self.reserved += tokens
        self._peak = None

    def released(self, reserve: float, preempted: bool) -> None:
        """A running request finished, or was preempted (its KV is gone): the overcommit restarts at 0."""
        self.reserved -= reserve
        if preempted:
            self.overcommit = 0.0
        self._peak = None
        self.running -= 1

    def resumed(self, reserve: float) -> None:
        """A preempted request runs again, with its reservation."""
        self.reserved += reserve
        self._peak = None
        self.running += 1
