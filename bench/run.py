"""`make bench`: measure the consumer and the scheduler against same-run ceilings.

    python -m bench.run [--quick] [--only consumer,latency,memory,scheduler] [--strict]
                        [--profile] [--keep] [--out DIR] [--consumer-env KEY=VALUE ...]

Exit status: 0 when every correctness check passed (a missed performance target
prints FAIL but exits 0 unless ``--strict``); 1 when a final state is wrong or a
part could not run; 2 with ``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import consumer, latency, memory, report, scheduler
from bench.stack import BenchFailure, Stack, db, embedded_stack
from referral_runtime.logs import configure_logging

PARTS = ("consumer", "latency", "memory", "scheduler")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scale:
    stream: int = 200_000
    referrers: int = 1_000
    naive: int = 20_000
    latency_rate: int = 2_000
    latency_seconds: float = 30.0
    latency_referrers: int = 500
    backlog: int = 1_000_000
    backlog_referrers: int = 5_000
    scheduler_referrals: int = 1_000_000
    scheduler_due: int = 100_000


FULL = Scale()
QUICK = Scale(20_000, 200, 2_000, 2_000, 5.0, 100, 100_000, 500, 100_000, 10_000)


def log(message: str) -> None:
    print(message, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="~1/10 scale, to iterate")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the consumer's throughput drain and the scheduler (perturbs them)",
    )
    p.add_argument(
        "--latency-linger-ms",
        type=int,
        default=5,
        help="linger of the latency producer (5 = the Java client's default since Kafka 4.0)",
    )
    p.add_argument("--keep", action="store_true", help="keep the stack's temp dir and logs")
    p.add_argument("--out", type=Path, help="where results go (default: bench/ for full runs)")
    p.add_argument(
        "--consumer-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the consumer process",
    )
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    try:
        args.env = dict(kv.split("=", 1) for kv in args.consumer_env)
    except ValueError:
        p.error("--consumer-env takes KEY=VALUE")
    return args


async def _postgres_version(stack: Stack) -> str:
    async with db(stack.server_uri) as conn:
        version: str = await conn.fetchval("show server_version")
    return version


async def measure(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    scale = QUICK if args.quick else FULL
    results["machine"]["postgres"] = await _postgres_version(stack)
    if "consumer" in args.parts:
        log(f"throughput: ceilings, consumer and naive baseline on {scale.stream:,} messages")
        profile = stack.root / "consumer-profile.txt" if args.profile else None
        results["throughput"] = await consumer.run(
            stack,
            messages=scale.stream,
            referrers=scale.referrers,
            naive_messages=scale.naive,
            extra_env=args.env,
            profile=profile,
            log=log,
        )
        _keep_profile(args, profile, results["throughput"])
    if "latency" in args.parts:
        log(f"latency: {scale.latency_rate:,} msg/s for {scale.latency_seconds:.0f} s")
        results["latency"] = await latency.run(
            stack,
            rate=scale.latency_rate,
            seconds=scale.latency_seconds,
            referrers=scale.latency_referrers,
            extra_env=args.env,
            linger_ms=args.latency_linger_ms,
            log=log,
        )
    if "memory" in args.parts:
        log(f"memory: draining a backlog of {scale.backlog:,} messages")
        results["memory"] = await memory.run(
            stack,
            messages=scale.backlog,
            referrers=scale.backlog_referrers,
            extra_env=args.env,
            log=log,
        )
    if "scheduler" in args.parts:
        log(f"scheduler: {scale.scheduler_referrals:,} referrals, {scale.scheduler_due:,} due")
        profile = stack.root / "scheduler-profile.txt" if args.profile else None
        results["scheduler"] = await scheduler.run(
            stack,
            referrals=scale.scheduler_referrals,
            due=scale.scheduler_due,
            profile=profile,
            log=log,
        )
        _keep_profile(args, profile, results["scheduler"])


def _keep_profile(args: argparse.Namespace, profile: Path | None, result: dict[str, Any]) -> None:
    """Copy a part's profile out of the stack's temp dir (removed at the end) to the results."""
    if profile is None:
        return
    out = _out_dir(args) / profile.name
    out.write_bytes(profile.read_bytes())
    result["profile"]["file"] = str(out)


def _full(args: argparse.Namespace) -> bool:
    return not args.quick and set(args.parts) == set(PARTS)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        out: Path = args.out
    elif _full(args):
        out = REPO / "bench"
    else:
        out = Path(tempfile.gettempdir()) / "referrals-bench-last"
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING", "console")  # the migrations' info lines are noise here
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": "make bench"
        if argv is None and len(sys.argv) == 1
        else "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "full",
        "parts": args.parts,
        "scale": asdict(QUICK if args.quick else FULL),
        "consumer_env": args.env,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "status": "running",
    }
    code = 0
    try:
        with embedded_stack(keep=args.keep) as stack:
            log(f"embedded stack: PostgreSQL + Tansu at {stack.bootstrap} under {stack.root}")
            asyncio.run(measure(stack, args, results))
        results["status"] = "ok"
    except BenchFailure as exc:
        results["status"] = "failed"
        results["error"] = str(exc)
        log(f"\nBENCHMARK FAILED: {exc}")
        code = 1
    except Exception as exc:
        results["status"] = "failed"
        results["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        log(f"\nBENCHMARK FAILED: {type(exc).__name__}: {exc}")
        code = 1
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 130
    results["duration_s"] = round(time.monotonic() - started, 1)
    checks = report.targets(results)
    results["targets"] = [t.as_dict() for t in checks]
    out = _out_dir(args)
    report.write_json(results, out / "results.json")
    plotted = report.plot(results, out / "throughput.png")
    log("\n" + report.tables(results))
    if _full(args) and results["status"] == "ok" and args.out is None:
        md = REPO / "BENCHMARKS.md"
        previous = md.read_text() if md.exists() else None
        md.write_text(
            report.with_kept_notes(report.markdown(results, "bench/throughput.png"), previous)
        )
        log(f"\nwrote {md.relative_to(REPO)}")
    log(f"wrote {out / 'results.json'}" + (f" and {out / 'throughput.png'}" if plotted else ""))
    log(f"total {results['duration_s']:.0f} s")
    missed = [t.name for t in checks if t.passed is False]
    if code == 0 and missed:
        log(
            f"targets missed: {', '.join(missed)}"
            + ("" if args.strict else " (exit 0 without --strict)")
        )
        if args.strict:
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
