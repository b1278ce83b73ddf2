"""The results as Markdown tables (with the serving tax and the ratio to the floor) and the project's
targets, each pass / fail."""

from __future__ import annotations

from typing import Any


def find(rows: list[dict[str, Any]], stack: str, model: str, conc: int) -> dict[str, Any] | None:
    for row in rows:
        if (
            row["stack"] == stack
            and row["model"] == model
            and row.get("conc") == conc
            and not row.get("error")
        ):
            return row
    return None


def add_tax(rows: list[dict[str, Any]], floors: dict[str, dict[str, Any]]) -> None:
    for row in rows:
        if row.get("conc") == 1 and row.get("p50_ms") is not None and row["model"] in floors:
            run_us = floors[row["model"]]["run_p50_us"]
            row["tax_us"] = round(row["p50_ms"] * 1000 - run_us, 1)
            row["tax_mean_us"] = round(row["mean_rt_us"] - run_us, 1)


def fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def print_table(
    rows: list[dict[str, Any]], model: str, floor: dict[str, Any] | None, stacks: list[str], title: str
) -> None:
    run = f"{floor['run_p50_us']} µs" if floor else "not measured"
    print(f"\n### {model} model, {title}: bare session.run (batch 1, 1 thread, CPU 0) p50 {run}\n")
    print(
        "| stack | c | req/s | p50 ms | p99 ms | CPU µs/req | tax at c=1 (µs): mean (p50) "
        "| ratio to floor (req/s ÷ raw) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for row in rows:
        if row["model"] != model or row["stack"] not in stacks:
            continue
        if row.get("error"):
            print(f"| {row['stack']} | - | error: {row['error'][:150]} | | | | | |")
            continue
        raw = find(rows, "raw", model, row["conc"])
        tax = f"{row['tax_mean_us']:.0f} ({row['tax_us']:.0f})" if "tax_us" in row else "-"
        ratio = f"{row['ok_rps'] / raw['ok_rps']:.2f}x" if raw and raw["ok_rps"] else "-"
        print(
            f"| {row['stack']} | {row['conc']} | {fmt(row['ok_rps'])} | {fmt(row['p50_ms'], 2)} | "
            f"{fmt(row['p99_ms'], 2)} | {fmt(row['cpu_us_per_req'])} | {tax} | {ratio} |"
        )
        if row["non200"] or row["errors"]:
            notes.append(f"{row['stack']} c={row['conc']}: {row['non200']} non-200; {row['errors'][:120]}")
    print(
        "\nEach row: the median of the repeated runs. tax = round trip at c=1 minus the bare session.run: the"
        " mean round trip (run length ÷ answers, hey's own client time included), and in brackets hey's p50,"
        " which hey rounds to 0.1 ms."
    )
    for note in notes:
        print(f"- {note}")


class Targets:
    """The checks, each pass / fail, or n/a when a number is missing."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.out: list[dict[str, Any]] = []

    def check(self, label: str, ok: bool | None, detail: str) -> None:
        result = "n/a" if ok is None else "PASS" if ok else "FAIL"
        self.out.append({"target": label, "result": result, "detail": detail})

    def get(self, stack: str, model: str, conc: int, key: str) -> float | None:
        row = find(self.rows, stack, model, conc)
        value = row.get(key) if row else None
        return float(value) if value is not None else None

    def ratio(self, label: str, model: str, versus: list[str], factor: float) -> None:
        """aiserve_batch's req/s at c=32 at least ``factor`` x the best of ``versus``."""
        ours = self.get("aiserve_batch", model, 32, "ok_rps")
        theirs = {s: v for s in versus if (v := self.get(s, model, 32, "ok_rps"))}
        if ours is None or not theirs:
            self.check(label, None, f"aiserve_batch {ours}, {versus}: {theirs}")
            return
        best = max(theirs, key=lambda s: theirs[s])
        ratio = ours / theirs[best]
        self.check(label, ratio >= factor, f"{ours:,.0f} vs {best} {theirs[best]:,.0f} req/s = {ratio:.2f}x")

    def tax(self, model: str) -> None:
        """The default configuration's (aiserve_batch) mean-based tax at c=1 against raw's."""
        label = f"{model}, c=1: aiserve serving tax <= 1.5x raw's (auth and metrics on)"
        raw = self.get("raw", model, 1, "tax_mean_us")
        ours = {s: self.get(s, model, 1, "tax_mean_us") for s in ("aiserve_batch", "aiserve")}
        default = ours["aiserve_batch"]
        if raw is None or default is None:
            self.check(label, None, f"raw {raw}, aiserve {ours}")
            return
        p50 = {s: self.get(s, model, 1, "tax_us") for s in ("raw", "aiserve_batch", "aiserve")}
        other = f"{ours['aiserve']:.0f} µs" if ours["aiserve"] is not None else "-"
        by_p50 = ", ".join(f"{s} {fmt(v, 0)}" for s, v in p50.items())
        self.check(
            label,
            default <= 1.5 * raw,
            f"aiserve_batch {default:.0f} µs = {default / raw:.2f}x raw {raw:.0f} µs (mean round trip); "
            f"aiserve (max batch 1) {other}; hey p50-based: {by_p50}",
        )


def targets(rows: list[dict[str, Any]], mcp_rest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 16's serving targets (aiserve_batch is the default configuration, AISERVE_MODEL_MAX_BATCH=64)."""
    t = Targets(rows)
    t.ratio("small, c=32: aiserve_batch >= 0.5x raw_batch", "small", ["raw_batch"], 0.5)
    t.ratio("small, c=32: aiserve_batch >= 5x best MLServer", "small", ["mlserver", "mlserver_batch"], 5)
    t.ratio("small, c=32: aiserve_batch >= 3x triton_batch", "small", ["triton_batch"], 3)
    t.ratio("big, c=32: aiserve_batch >= 3x best MLServer", "big", ["mlserver", "mlserver_batch"], 3)
    t.ratio("big, c=32: aiserve_batch >= 2x triton_batch", "big", ["triton_batch"], 2)
    t.ratio("big, c=32: batching >= 2x (aiserve_batch vs aiserve)", "big", ["aiserve"], 2)
    for model in ("small", "big"):
        t.tax(model)
    label = "MCP tools/call of a read tool <= 1.2x the same tool over REST (p50, one at a time)"
    if not mcp_rest or mcp_rest.get("error"):
        t.check(label, None, str(mcp_rest and mcp_rest.get("error")))
    else:
        rest, *mcps = mcp_rest["rows"]
        ratios = {m["surface"]: m["p50_us"] / rest["p50_us"] for m in mcps}
        means = ", ".join(f"{m['mean_us'] / rest['mean_us']:.2f}x" for m in mcps)
        t.check(
            label,
            max(ratios.values()) <= 1.2,
            f"REST p50 {rest['p50_us']:.0f} µs; "
            + ", ".join(f"{m['surface']} {m['p50_us']:.0f} µs = {ratios[m['surface']]:.2f}x" for m in mcps)
            + f"; mean-based {means}",
        )
    return t.out
