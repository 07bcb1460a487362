"""Budgets that cannot be overshot: `--max-cost USD` and `--max-total-tokens N`.

Before an attempt leaves, its worst case is reserved: its prompt (estimated) plus its
completion cap, at the requested model's prices. After the answer the reservation is
replaced by what the gateway charged (its usage, at the served model's prices). An
attempt whose worst case does not fit is not sent: the run stops admitting, finishes
what is in flight, and exits 4; a rerun with a larger budget continues.

The guarantee needs a cap on every request (the line's own, or `--max-tokens`) and a
price for every requested model; a request without either stops the run instead of
being guessed at. An attempt that got no answer (a timeout, a dropped connection), or a
2xx answer without a usage to charge (none sent, a body cut off), may have been billed,
so its reservation is kept as spent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from batchib.pricing import PriceTable
from batchib.tokens import max_completion_tokens


@dataclass(frozen=True)
class Reservation:
    usd: float
    tokens: int


class Budget:
    def __init__(
        self,
        max_cost_usd: float | None,
        max_total_tokens: int | None,
        prices: PriceTable | None,
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.max_total_tokens = max_total_tokens
        self._prices = prices
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self.reserved_usd = 0.0
        self.reserved_tokens = 0
        self._settled = asyncio.Event()
        self._open = 0

    @property
    def in_flight(self) -> bool:
        # Counted, not inferred from the float sums, which keep rounding residue.
        return self._open > 0

    async def wait_settled(self) -> None:
        """Until some reservation is replaced by what was charged (usually less)."""
        self._settled.clear()
        await self._settled.wait()

    async def admit(
        self, model: str, body: dict[str, Any], prompt_tokens: int
    ) -> Reservation | str:
        """Reserve, waiting for requests in flight to settle while they hold the room
        this one needs; the reason it cannot go once nothing is left to settle."""
        while True:
            granted = self.reserve(model, body, prompt_tokens)
            if isinstance(granted, Reservation) or not self.in_flight:
                return granted
            if granted.startswith(("a request sets no", "no price")):
                return granted
            await self.wait_settled()

    def reserve(self, model: str, body: dict[str, Any], prompt_tokens: int) -> Reservation | str:
        """Reserve the worst case of one attempt, or say why it cannot go."""
        cap = max_completion_tokens(body)
        if cap is None:
            return (
                "a request sets no max_tokens/max_completion_tokens, so its cost has no "
                "upper bound; with a budget, set one on every line or pass --max-tokens"
            )
        usd = 0.0
        if self.max_cost_usd is not None:
            price = self._prices.price_for(model) if self._prices else None
            if price is None:
                return f"no price for model {model!r}: a cost budget cannot be guaranteed"
            usd = price.cost_usd({"prompt_tokens": prompt_tokens, "completion_tokens": cap})
            if self.spent_usd + self.reserved_usd + usd > self.max_cost_usd:
                return (
                    f"the cost budget of ${self.max_cost_usd:g} would be exceeded "
                    f"(spent ${self.spent_usd:.4f}, in flight up to ${self.reserved_usd:.4f})"
                )
        tokens = prompt_tokens + cap
        if self.max_total_tokens is not None and (
            self.spent_tokens + self.reserved_tokens + tokens > self.max_total_tokens
        ):
            return (
                f"the token budget of {self.max_total_tokens:,} would be exceeded "
                f"(spent {self.spent_tokens:,}, in flight up to {self.reserved_tokens:,})"
            )
        self.reserved_usd += usd
        self.reserved_tokens += tokens
        self._open += 1
        return Reservation(usd, tokens)

    def settle(
        self,
        reservation: Reservation,
        served_model: str | None,
        usage: dict[str, Any] | None,
        *,
        unknown: bool = False,
    ) -> None:
        """Replace a reservation by what was charged: `usage` (from
        :meth:`batchib.reply.Reply.billed_usage`), nothing when it is None, or the worst
        case when what was charged is `unknown` (no answer, or a 2xx that does not say)."""
        self._settled.set()
        self._open -= 1
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd) if self._open else 0.0
        self.reserved_tokens -= reservation.tokens
        if unknown:
            # It may have been billed in full: count the worst case.
            self.spent_usd += reservation.usd
            self.spent_tokens += reservation.tokens
            return
        if usage is None:
            return  # an error answer, or an attempt never sent: not billed
        self.spent_tokens += usage["prompt_tokens"] + usage["completion_tokens"]
        price = self._prices.price_for(served_model) if self._prices and served_model else None
        self.spent_usd += price.cost_usd(usage) if price is not None else reservation.usd

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose attempt was never sent (the run stopped)."""
        self.settle(reservation, None, None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_cost_usd": self.max_cost_usd,
            "max_total_tokens": self.max_total_tokens,
            "spent_usd": round(self.spent_usd, 9),
            "spent_tokens": self.spent_tokens,
        }
