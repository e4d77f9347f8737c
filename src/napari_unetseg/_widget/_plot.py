"""A small live plot of the training loss and the validation score, painted with QPainter (no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(90, 170, 255)
SCORE_COLOR = QColor(255, 170, 60)
BEST_COLOR = QColor(120, 220, 120)


class LossPlot(QWidget):
    """Loss per iteration (blue, left scale), validation score 0-1 (orange, right scale), best iteration (green)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.total = 0  # iterations planned; 0 before the first run
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.best = 0

    def reset(self, total: int) -> None:
        """Start an empty plot for ``total`` iterations."""
        self.total = max(1, total)
        self.losses, self.scores, self.best = [], [], 0
        self.update()

    def add(self, iteration: int, loss: float, score: float | None, validated: bool, best: bool) -> None:
        """Append one iteration and repaint."""
        if math.isfinite(loss):
            self.losses.append((iteration, loss))
        if validated and score is not None:
            self.scores.append((iteration, score))
        if best:
            self.best = iteration
        self.update()

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(30, 33, 40))
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        area = QRectF(self.rect()).adjusted(34, 18, -30, -16)
        painter.setPen(QPen(QColor(110, 110, 120), 1))
        painter.drawRect(area)
        top = max((v for _, v in self.losses), default=1.0)
        top = top if top > 0 else 1.0

        def point(iteration: int, value: float, scale: float) -> QPointF:
            x = area.left() + area.width() * iteration / max(self.total, 1)
            return QPointF(x, area.bottom() - area.height() * min(max(value / scale, 0.0), 1.0))

        if self.best:
            painter.setPen(QPen(BEST_COLOR, 1, Qt.PenStyle.DashLine))
            x = point(self.best, 0, 1).x()
            painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
        if self.losses:
            painter.setPen(QPen(LOSS_COLOR, 1.5))
            painter.drawPolyline(QPolygonF([point(i, v, top) for i, v in self.losses]))
        painter.setPen(QPen(SCORE_COLOR, 1.5))
        painter.setBrush(SCORE_COLOR)
        if len(self.scores) > 1:
            painter.drawPolyline(QPolygonF([point(i, v, 1.0) for i, v in self.scores]))
        for i, v in self.scores:
            painter.drawEllipse(point(i, v, 1.0), 2.5, 2.5)
        self._labels(painter, area, top)
        painter.end()

    def _labels(self, painter: QPainter, area: QRectF, top: float) -> None:
        painter.setPen(LOSS_COLOR)
        painter.drawText(QRectF(0, area.top() - 4, 32, 14), Qt.AlignmentFlag.AlignRight, f"{top:.2g}")
        painter.drawText(QRectF(0, area.bottom() - 10, 32, 14), Qt.AlignmentFlag.AlignRight, "0")
        loss = f"loss {self.losses[-1][1]:.3f}" if self.losses else "loss"
        painter.drawText(QRectF(area.left(), 2, area.width() / 2, 14), Qt.AlignmentFlag.AlignLeft, loss)
        painter.setPen(SCORE_COLOR)
        painter.drawText(QRectF(area.right() + 3, area.top() - 4, 30, 14), Qt.AlignmentFlag.AlignLeft, "1")
        painter.drawText(QRectF(area.right() + 3, area.bottom() - 10, 30, 14), Qt.AlignmentFlag.AlignLeft, "0")
        score = f"held-out score {self.scores[-1][1]:.2f}" if self.scores else "held-out score –"
        painter.drawText(QRectF(area.center().x(), 2, area.width() / 2, 14), Qt.AlignmentFlag.AlignRight, score)
        painter.setPen(QColor(160, 160, 170))
        painter.drawText(
            QRectF(area.left(), area.bottom() + 1, area.width(), 14),
            Qt.AlignmentFlag.AlignRight,
            f"iteration (of {self.total})" if self.total else "iteration",
        )
