"""The hardware rows and locations the fake rents out.

``GET .../caas/hardware`` is not in the reference pages read: its rows are taken to be the VMaaS hardware
list's (io.net/docs/reference/vmaas/get-hardware: ``id``, ``name``, ``num_cards``, ``vram_per_card`` GB,
``price`` USD/hour for the whole configuration, ``location`` ISO code, ``sold_out``, ...) with CaaS's
integer ``hardware_id`` and, as the public ``/v1/io-cloud/caas/hardware`` shows, ``brand_name`` and
``available_replicas``. Unverified against a live account. ``LOCATIONS`` gives each ISO code the integer
location id that ``available-replicas`` lists and a deploy takes.
"""

from __future__ import annotations

import random
from typing import Any

LOCATIONS: dict[str, tuple[int, str]] = {
    "US": (1, "United States"),
    "DE": (2, "Germany"),
    "FI": (3, "Finland"),
    "SG": (4, "Singapore"),
    "CA": (5, "Canada"),
    "GB": (6, "United Kingdom"),
    "JP": (7, "Japan"),
    "AU": (8, "Australia"),
    "NL": (9, "Netherlands"),
    "FR": (10, "France"),
}


def sample_hardware() -> list[dict[str, Any]]:
    """A few rows: two RTX 4090 sizes, a B200 and an H100 configuration, a sold-out A100 and a CPU-only row
    the client must skip."""
    return [
        _row("12__1", 12, "GeForce RTX 4090", 1, "internal", 0.3, 24, 500, 39, 125, "US"),
        _row("12__2", 12, "GeForce RTX 4090", 2, "internal", 0.6, 24, 1000, 39, 125, "US"),
        _row("B200_sxm6x8__US", 401, "B200", 8, "external", 39.92, 192, 22528, 208, 2900, "US"),
        _row(
            "8H100.80S.176V__FI",
            402,
            "H100 80GB HBM3",
            8,
            "external",
            27.875342,
            80,
            2000,
            176,
            1480,
            "FI",
            interconnect="sxm5",
            nvlink=True,
        ),
        _row("31__4", 31, "A100-SXM4-80GB", 4, "internal", 5.2, 80, 2000, 64, 500, "DE", sold_out=True),
        _row("1CPU__US", 900, "", 0, "external", 0.1, 0, None, None, None, "US"),
    ]


def _row(
    row_id: str,
    hardware_id: int,
    name: str,
    num_cards: int,
    supplier: str,
    price: float,
    vram_per_card: int | None,
    storage: int | None,
    vcpu: int | None,
    memory: int | None,
    location: str | None,
    *,
    sold_out: bool = False,
    interconnect: str | None = None,
    nvlink: bool = False,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "hardware_id": hardware_id,
        "name": name,
        "brand_name": "NVIDIA" if name else "",
        "num_cards": num_cards,
        "supplier": supplier,
        "sold_out": sold_out,
        "available_replicas": 0 if sold_out else 3,
        "price": price,
        "vram_per_card": vram_per_card,
        "interconnect": interconnect,
        "nvlink": nvlink,
        "storage": storage,
        "vcpu": vcpu,
        "memory": memory,
        "location": location,
    }


# name, short code for external ids, GB per card, USD per card-hour range, interconnect
_MODELS: tuple[tuple[str, str, int, float, float, str | None], ...] = (
    ("GeForce RTX 4090", "RTX4090", 24, 0.25, 0.45, None),
    ("GeForce RTX 3090", "RTX3090", 24, 0.13, 0.25, None),
    ("RTX A6000", "A6000", 48, 0.40, 0.65, None),
    ("L40S", "L40S", 48, 0.70, 1.05, None),
    ("A100-SXM4-80GB", "A100.80S", 80, 1.10, 1.65, "sxm4"),
    ("H100 80GB HBM3", "H100.80S", 80, 1.85, 2.70, "sxm5"),
    ("H200", "H200.141S", 141, 2.80, 3.70, "sxm5"),
)
_ROW_LOCATIONS = ("US", "US", "US", "DE", "SG", "CA", "FI", "GB", "JP", "AU", "NL", "FR")


def make_hardware(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic rows with unique ids: internal rows ``"<hardware_id>__<cards>"``, external rows
    ``"<cards><model>.<vcpu>V__<location>"``; whole-configuration prices; about one in ten sold out."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        name, code, vram, low, high, interconnect = rng.choice(_MODELS)
        cards = rng.choice((1, 1, 2, 4, 8) if vram < 80 else (1, 2, 4, 8, 8))
        location = rng.choice(_ROW_LOCATIONS)
        vcpu = cards * rng.choice((8, 12, 16, 22))
        external = rng.random() < 0.3
        row_id = f"{cards}{code}.{vcpu}V__{location}" if external else f"{100 + len(rows)}__{cards}"
        if row_id in seen:
            continue
        seen.add(row_id)
        rows.append(
            _row(
                row_id,
                100 + len(rows),
                name,
                cards,
                "external" if external else "internal",
                round(cards * rng.uniform(low, high), 6),
                vram,
                cards * rng.choice((250, 500, 1000)),
                vcpu,
                cards * rng.choice((32, 48, 64, 125, 185)),
                location,
                sold_out=rng.random() < 0.1,
                interconnect=interconnect if cards > 1 else None,
                nvlink=interconnect is not None and cards == 8,
            )
        )
    return rows
