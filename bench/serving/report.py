"""The results as Markdown tables (with the serving tax and the ratio to the floor) and the project's
targets, each pass / fail."""

from __future__ import annotations

from typing import Any

from bench.serving.stacks import AISERVE_STACKS


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


def print_table(rows: list[dict[str, Any]], model: str, floor: dict[str, Any] | None) -> None:
    run = f"{floor['run_p50_us']} µs" if floor else "not measured"
    print(f"\n### {model} model: bare session.run (batch 1, 1 thread, CPU 0) p50 {run}\n")
    print(
        "| stack | c | req/s | p50 ms | p99 ms | CPU µs/req | tax at c=1 (µs): p50 (mean) "
        "| ratio to floor (req/s ÷ raw) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for row in rows:
        if row["model"] != model:
            continue
        if row.get("error"):
            print(f"| {row['stack']} | - | error: {row['error'][:150]} | | | | | |")
            continue
        raw = find(rows, "raw", model, row["conc"])
        tax = f"{row['tax_us']:.0f} ({row['tax_mean_us']:.0f})" if "tax_us" in row else "-"
        ratio = f"{row['ok_rps'] / raw['ok_rps']:.2f}x" if raw and raw["ok_rps"] else "-"
        print(
            f"| {row['stack']} | {row['conc']} | {fmt(row['ok_rps'])} | {fmt(row['p50_ms'], 2)} | "
            f"{fmt(row['p99_ms'], 2)} | {fmt(row['cpu_us_per_req'])} | {tax} | {ratio} |"
        )
        if row["non200"] or row["errors"]:
            notes.append(f"{row['stack']} c={row['conc']}: {row['non200']} non-200; {row['errors'][:120]}")
    print(
        "\ntax = latency at c=1 minus the bare session.run; hey rounds percentiles to 0.1 ms, so the mean"
        " round trip (1 / req/s at c=1, hey's own client time included) is given in brackets."
    )
    for note in notes:
        print(f"- {note}")


def targets(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """The project's serving targets, each pass / fail, or n/a when a number is missing."""
    out: list[dict[str, Any]] = []

    def check(label: str, ok: bool | None, detail: str) -> None:
        out.append(
            {"target": label, "result": "n/a" if ok is None else "PASS" if ok else "FAIL", "detail": detail}
        )

    def get(stack: str, model: str, conc: int, key: str) -> float | None:
        row = find(rows, stack, model, conc)
        value = row.get(key) if row else None
        return float(value) if value is not None else None

    for model in models:
        raw_tax = get("raw", model, 1, "tax_us")
        taxes = {s: get(s, model, 1, "tax_us") for s in AISERVE_STACKS}
        known = {s: t for s, t in taxes.items() if t is not None}
        if raw_tax is None or not known:
            check(f"1. {model}: aiserve tax at c=1 <= 2x raw tax", None, f"raw {raw_tax}, aiserve {taxes}")
        else:
            best = min(known, key=lambda s: known[s])
            means = {s: get(s, model, 1, "tax_mean_us") for s in known}
            detail = ", ".join(f"{s} {t:.0f} µs" for s, t in known.items())
            raw_mean = get("raw", model, 1, "tax_mean_us")
            detail += "; mean-based: " + ", ".join(f"{s} {fmt(t, 0)} µs" for s, t in means.items())
            detail += f", raw {fmt(raw_mean, 0)} µs"
            check(
                f"1. {model}: aiserve tax at c=1 <= 2x raw tax",
                known[best] <= 2 * raw_tax,
                f"best {best} {known[best]:.0f} µs = {known[best] / raw_tax:.2f}x raw {raw_tax:.0f} µs "
                f"({detail})",
            )
    for model in models:
        batch = get("aiserve_batch", model, 32, "ok_rps")
        raw_batch = get("raw_batch", model, 32, "ok_rps")
        label = f"2. {model}: aiserve_batch req/s at c=32 >= 0.5x raw_batch"
        if batch is None or not raw_batch:
            check(label, None, f"aiserve_batch {batch}, raw_batch {raw_batch}")
        else:
            check(
                label, batch >= 0.5 * raw_batch, f"{batch:.0f} vs {raw_batch:.0f} = {batch / raw_batch:.2f}x"
            )
    for model in models:
        batch = get("aiserve_batch", model, 32, "ok_rps")
        mls = {s: get(s, model, 32, "ok_rps") for s in ("mlserver", "mlserver_batch")}
        known_ml = {s: v for s, v in mls.items() if v}
        label = f"3a. {model}: aiserve_batch req/s at c=32 >= 3x best mlserver"
        if batch is None or not known_ml:
            check(label, None, f"aiserve_batch {batch}, mlserver {mls}")
        else:
            best = max(known_ml, key=lambda s: known_ml[s])
            check(
                label,
                batch >= 3 * known_ml[best],
                f"{batch:.0f} vs {best} {known_ml[best]:.0f} = {batch / known_ml[best]:.2f}x",
            )
        triton = get("triton_batch", model, 32, "ok_rps")
        label = f"3b. {model}: aiserve_batch req/s at c=32 >= 2x triton_batch"
        if batch is None or not triton:
            check(label, None, f"aiserve_batch {batch}, triton_batch {triton}")
        else:
            check(label, batch >= 2 * triton, f"{batch:.0f} vs {triton:.0f} = {batch / triton:.2f}x")
    if "big" in models:
        batch, single = get("aiserve_batch", "big", 32, "ok_rps"), get("aiserve", "big", 32, "ok_rps")
        label = "4a. big: aiserve_batch req/s at c=32 >= 2x aiserve (unbatched)"
        if batch is None or not single:
            check(label, None, f"aiserve_batch {batch}, aiserve {single}")
        else:
            check(label, batch >= 2 * single, f"{batch:.0f} vs {single:.0f} = {batch / single:.2f}x")
        batch, single = get("aiserve_batch", "big", 1, "p50_ms"), get("aiserve", "big", 1, "p50_ms")
        label = "4b. big: aiserve_batch p50 at c=1 - aiserve p50 at c=1 <= 0.1 ms"
        if batch is None or single is None:
            check(label, None, f"aiserve_batch {batch}, aiserve {single}")
        else:
            mean_b, mean_s = (
                get("aiserve_batch", "big", 1, "mean_rt_us"),
                get("aiserve", "big", 1, "mean_rt_us"),
            )
            mean = f"{(mean_b - mean_s) / 1000:+.3f} ms" if mean_b is not None and mean_s is not None else "-"
            check(
                label,
                batch - single <= 0.1,
                f"p50 {batch:.2f} - {single:.2f} = {batch - single:+.2f} ms; mean round trip {mean}",
            )
    return out
