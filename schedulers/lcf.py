"""LCF, least counter first: VTC without the lift (the ablation that shows why the
lift matters: a client returning from idle spends the credit it built up)."""

from schedulers.vtc import VTC


class LCF(VTC):
    name = "lcf"
    lift = False
