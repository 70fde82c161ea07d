"""The session's slots: one per device (engine/run/slots.py), or one per GPU (or cpu:N) of every node
of a Ray cluster (engine/run/cluster.py), where nodes join and die while the session runs. The single
owner of the list of slots: it is rebound, never changed in place, since other threads read it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import events as ev
from .runs import Run
from .slots import Device, Slot
from .targets import Target

if TYPE_CHECKING:
    from .cluster import Cluster


class SlotSet:
    """`devices` the local devices (unused with a `cluster`), `target` the session's target (each
    local slot gets its own copy), `trees` where the slots' checkouts go."""

    def __init__(self, devices: list[Device], target: Target, trees: Path, cluster: Cluster | None,
                 emit: Callable[[ev.Event], None]):
        self.devices, self.target, self.trees, self.cluster, self.emit = devices, target, trees, cluster, emit
        self.slots: list[Slot] = []
        self._looked = 0.0  # when the cluster's nodes were last looked at

    # ---- what the slots do now ----
    def busy(self) -> int:
        return sum(sl.busy for sl in self.slots)

    def free(self) -> list[Slot]:
        return [sl for sl in self.slots if not sl.busy]

    def runs(self) -> list[Run]:
        """The runs on the slots now (each slot's read once: other threads release them)."""
        return [r for r in (sl.run for sl in self.slots) if r is not None]

    # ---- making and dropping slots ----
    def make(self) -> None:
        """One slot per device, each with its own copy of the target (its own spare child)."""
        if self.slots:
            return
        if self.cluster is not None:  # one slot per GPU (or cpu:N per node) of every node, checked
            for d, target in self.cluster.discover():
                self.slots.append(self.new_slot(d, target))
            self._notices()
            if not self.slots:
                from .cluster import ClusterError

                raise ClusterError(f"the Ray cluster at {self.cluster.address} gives no usable slot (see the notices)")
            self.cluster.watch()
            return
        many = len(self.devices) > 1 or bool(self.devices[0].env)
        for i, d in enumerate(self.devices):  # (in place: no other thread runs yet)
            self.slots.append(self.new_slot(d, self.target.for_slot(str(i), d.env) if many else self.target))

    def new_slot(self, d: Device, target: Target) -> Slot:
        """A slot for device d, numbered after every slot so far (its checkout: <trees>/<i>)."""
        i = max((sl.index for sl in self.slots), default=-1) + 1
        return Slot(i, d, target, self.trees / str(i))

    def drop(self, slot: Slot, why: str) -> None:
        self.slots = [sl for sl in self.slots if sl is not slot]  # rebound: other threads read the list
        try:
            slot.target.close()
        except Exception:  # noqa: S110  (its node may be gone: nothing there to close)
            pass
        slot.close()
        left = len(self.slots)
        self.emit(ev.Notice(text=f"slot {slot.index} ({slot.device.label}) removed: {why}; {left} slot(s) left"
                                 + ("" if left else ", waiting for a node to join")))

    def close(self) -> None:
        """No spare training process outlives the session."""
        for slot in self.slots:
            slot.target.close()
            slot.close()
        if not self.slots:
            self.target.close()
        if self.cluster is not None:
            self.cluster.close()

    # ---- the slots of a Ray cluster: nodes that join or die ----
    def _notices(self) -> None:
        if self.cluster is not None:
            while not self.cluster.notices.empty():
                self.emit(ev.Notice(text=self.cluster.notices.get_nowait()))

    def cluster_turn(self) -> None:
        """Slots of nodes that joined are added (warm); idle slots of nodes that died go."""
        if self.cluster is None:
            return
        from .cluster import JOIN_EVERY

        self._notices()
        while not self.cluster.new.empty():
            d, target = self.cluster.new.get_nowait()
            slot = self.new_slot(d, target)
            try:
                target.warm_up()
            except Exception:  # noqa: S110  (only a head start: the first run starts its own process)
                pass
            self.slots = self.slots + [slot]
            self.emit(ev.Notice(text=f"slot {slot.index} added: {d.label}"))
        if time.monotonic() - self._looked < JOIN_EVERY:
            return
        self._looked = time.monotonic()
        try:
            alive = self.cluster.alive()
        except Exception:  # the cluster's own trouble: looked at again later
            return
        for sl in [sl for sl in self.slots if not sl.busy and sl.device.node and sl.device.node not in alive]:
            self.drop(sl, "its node is gone")
