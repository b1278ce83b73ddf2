"""Load-balancing strategies on heterogeneous backends: a discrete-event simulation in virtual time.

Model (every number can be changed from the command line):

- backends: ``--fast`` backends with a mean service time of ``--fast-ms`` (20 ms) and one slow backend
  ``--slow-factor`` times slower (5x: 100 ms). Each serves up to ``--slots`` requests at once (4 parallel
  slots, like an inference server's concurrent batch slots); further requests wait in a FIFO queue in
  front of it. Service times are exponential; each request draws one size ``s ~ Exp(1)`` and takes
  ``s * mean`` on whichever backend serves it, so every strategy sees the same requests.
- arrivals: a Poisson process of ``--requests`` requests (10,000) at ``--rate`` per second, by default
  70% of the total capacity ``sum(slots / mean service time)``.
- latency: from arrival to completion, queueing at the backend included (what a proxy measures).

Each strategy drives the real ``Balancer`` on a ``MemoryLoadStore`` whose clock is the simulation's
virtual clock: ``pick`` at arrival, ``begin`` when the request is sent, ``finish`` at completion, so
in-flight counts include requests queued at a backend. ``weighted_round_robin`` uses weights
proportional to capacity (fast 5, slow 1 at the defaults). ``random (floor)`` picks uniformly without the
balancer: the baseline every strategy should beat. Nothing sleeps; a heap of events advances time.

Run: ``.venv/bin/python -m bench.balancer_sim`` (from the repository root).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from aiserve_mcp.traffic.balancer import STRATEGIES, Backend, Balancer, MemoryLoadStore, Strategy, Ticket

POOL = "sim:pool"
FLOOR = "random (floor)"


class VirtualClock:
    """The simulation's time in seconds; the balancer reads it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Request:
    arrival: float
    size: float
    ticket: Ticket | None = None


@dataclass
class Server:
    """One backend: ``slots`` requests in service at once, the rest waiting in FIFO order."""

    backend: Backend
    mean_s: float
    slots: int
    busy: int = 0
    queue: deque[Request] = field(default_factory=deque)
    served: int = 0


@dataclass(frozen=True)
class Result:
    strategy: str
    latencies_ms: list[float]
    slow_share: float


@dataclass(frozen=True)
class Scenario:
    servers: list[tuple[Backend, float]]  # backend and mean service time in seconds
    slots: int
    arrivals: list[float]
    sizes: list[float]
    seed: int

    @property
    def capacity(self) -> float:
        return sum(self.slots / mean for _, mean in self.servers)


def build(args: argparse.Namespace) -> Scenario:
    fast_s, slow_s = args.fast_ms / 1000, args.fast_ms * args.slow_factor / 1000
    servers = [(Backend(f"fast-{i + 1}", weight=args.slow_factor), fast_s) for i in range(args.fast)]
    servers.append((Backend("slow", weight=1.0), slow_s))
    capacity = sum(args.slots / mean for _, mean in servers)
    rate = args.rate or 0.7 * capacity
    rng = random.Random(args.seed)  # noqa: S311 (simulation)
    arrivals, t = [], 0.0
    for _ in range(args.requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    sizes = [rng.expovariate(1.0) for _ in range(args.requests)]
    return Scenario(servers, args.slots, arrivals, sizes, args.seed)


async def simulate(scenario: Scenario, strategy: Strategy | None) -> Result:
    """Run every request through ``strategy`` (``None``: uniform random without the balancer)."""
    clock = VirtualClock()
    rng = random.Random(scenario.seed + 1)  # noqa: S311 (simulation)
    balancer = Balancer(MemoryLoadStore(), clock=clock, rng=random.Random(scenario.seed + 2))  # noqa: S311
    servers = {b.id: Server(b, mean, scenario.slots) for b, mean in scenario.servers}
    backends = [server.backend for server in servers.values()]
    events: list[tuple[float, int, str, Request | None]] = []
    sequence = 0

    def schedule(at: float, server_id: str, request: Request | None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, server_id, request))

    def start(server: Server, request: Request) -> None:
        server.busy += 1
        schedule(clock.now + request.size * server.mean_s, server.backend.id, request)

    for arrival, size in zip(scenario.arrivals, scenario.sizes, strict=True):
        schedule(arrival, "", Request(arrival, size))

    latencies: list[float] = []
    while events:
        clock.now, _, server_id, request = heapq.heappop(events)
        assert request is not None
        if not server_id:  # an arrival
            if strategy is None:
                server = servers[rng.choice(backends).id]
            else:
                backend = await balancer.pick(POOL, strategy, backends)
                server = servers[backend.id]
                request.ticket = await balancer.begin(POOL, backend.id)
            server.served += 1
            if server.busy < server.slots:
                start(server, request)
            else:
                server.queue.append(request)
            continue
        server = servers[server_id]  # a completion
        server.busy -= 1
        latencies.append((clock.now - request.arrival) * 1000)
        if request.ticket is not None:
            await balancer.finish(request.ticket, True)
        if server.queue:
            start(server, server.queue.popleft())
    slow = servers["slow"].served / len(latencies)
    return Result(strategy or FLOOR, latencies, slow)


def table(results: list[Result]) -> str:
    lines = [
        "| strategy | p50 ms | p99 ms | mean ms | share on slow backend |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        cuts = statistics.quantiles(result.latencies_ms, n=100, method="inclusive")
        lines.append(
            f"| {result.strategy} | {cuts[49]:.1f} | {cuts[98]:.1f} | "
            f"{statistics.fmean(result.latencies_ms):.1f} | {result.slow_share:.1%} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    scenario = build(args)
    rate = len(scenario.arrivals) / scenario.arrivals[-1]
    print(
        f"{len(scenario.servers)} backends ({args.fast} x {args.fast_ms:g} ms, 1 x "
        f"{args.fast_ms * args.slow_factor:g} ms), {args.slots} slots each, capacity "
        f"{scenario.capacity:.0f} req/s; {len(scenario.arrivals)} requests at "
        f"{args.rate or 0.7 * scenario.capacity:.0f} req/s (observed {rate:.0f}), seed {args.seed}\n"
    )
    results = []
    started = time.perf_counter()
    for strategy in (None, *STRATEGIES):
        results.append(await simulate(scenario, strategy))
    print(table(results))
    print(f"\n(simulated in {time.perf_counter() - started:.1f} s of wall time)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.balancer_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: 70%% load)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast", type=int, default=3, help="number of fast backends (plus one slow one)")
    parser.add_argument("--fast-ms", type=float, default=20.0, help="mean service time of a fast backend")
    parser.add_argument("--slow-factor", type=float, default=5.0, help="how much slower the slow one is")
    parser.add_argument("--slots", type=int, default=4, help="requests each backend serves at once")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
