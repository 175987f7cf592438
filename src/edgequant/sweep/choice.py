"""Choosing among measured rows: the Pareto fronts, the lowest post-training row, the answer."""
from __future__ import annotations


def pareto(rows: list[dict], cost: str) -> set[str]:
    """Labels of rows that no other row beats on both ``cost`` (lower) and accuracy (higher)."""
    ok = [r for r in rows if r["status"] == "ok" and r.get(cost) is not None]
    front = set()
    for r in ok:
        dominated = any(o is not r and o[cost] <= r[cost] and o["accuracy"] >= r["accuracy"]
                        and (o[cost] < r[cost] or o["accuracy"] > r["accuracy"]) for o in ok)
        if not dominated:
            front.add(r["recipe"])
    return front


def lowest(rows: list[dict]) -> dict | None:
    """The most aggressive uniform post-training row that ran: fewest weight+activation bits, then
    smallest (a mixed row's minimum width is not its width)."""
    cands = [r for r in rows if r["status"] == "ok" and not r["qat"] and r["mode"] != "float" and not r.get("mixed")]
    return min(cands, key=lambda r: (r["weight_bits"] + r["act_bits"], r["size_bytes"])) if cands else None


def choose(rows: list[dict], budget: float) -> tuple[dict | None, dict | None]:
    """(smallest, fastest) among rows whose drop is within ``budget`` points."""
    within = [r for r in rows if r["status"] == "ok" and r["drop"] <= budget + 1e-9]
    if not within:
        return None, None
    smallest = min(within, key=lambda r: (r["size_bytes"], -r["accuracy"], _latency(r)))
    fastest = min(within, key=lambda r: (_latency(r), r["size_bytes"], -r["accuracy"]))
    return smallest, fastest


def _latency(r: dict) -> float:
    """A row whose latency was not measured (time limit) is never the fastest."""
    return float("inf") if r.get("latency_ms") is None else r["latency_ms"]
