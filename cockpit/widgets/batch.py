"""Drawing once a frame: the app applies a frame's events together (cockpit/app.py); a widget
held meanwhile only notes that it changed, and redraws once when released. With 64 slots a
frame carries 64 progress ticks: one redraw, not 64."""

from __future__ import annotations


class Batched:
    _batch_held = False
    _batch_dirty = False

    def redraw(self) -> None:  # the widget's own drawing
        raise NotImplementedError

    def changed(self) -> None:
        """Redraw now, or at the end of the frame being applied."""
        if self._batch_held:
            self._batch_dirty = True
        else:
            self.redraw()

    def hold(self, held: bool) -> None:
        self._batch_held = held
        if not held and self._batch_dirty:
            self._batch_dirty = False
            self.redraw()
