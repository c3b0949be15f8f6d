"""`quota bench`: the hot path against a raw-EVALSHA baseline and against the
alternatives, the drain, and scale, written to docs/BENCHMARKS.md.

Not part of the test suite (the tests only run ``--quick`` so the harness cannot rot).
Uses its own key prefix and database (./scripts/bench sets them) and cleans up after.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from quota.bench import client, hotpath, instructions, ledger, peers, scale
from quota.bench._measure import Row, fmt, reset, write_markdown
from quota.settings import Settings

Section = Callable[[Settings, redis.Redis, bool], list[Row]]

SECTIONS: dict[str, Section] = {
    "sequential": lambda s, c, q: hotpath.bench_sequential(s, c, 2_000 if q else 20_000),
    "processes": lambda s, c, q: hotpath.bench_processes(
        s, c, 0.5 if q else 8.0, rounds=2 if q else 16
    ),
    "batched": lambda s, c, q: hotpath.bench_batched(s, c, 3 if q else 50),
    "limits": lambda s, c, q: peers.bench_limits(s, c, 500 if q else 10_000),
    "drain": lambda s, c, q: ledger.bench_drain(s, c, 20_000 if q else 300_000, 1 if q else 3),
    "drain-parallel": lambda s, c, q: ledger.bench_drain_parallel(s, c, 20_000 if q else 300_000),
    "lag": lambda s, c, q: ledger.bench_lag(
        s, c, rate=2_000 if q else 20_000, seconds=3 if q else 20, workers=2
    ),
    "seed": lambda s, c, q: peers.bench_seed(
        s, c, [1_000, 10_000] if q else [10_000, 100_000, 1_000_000], 200 if q else 3_000
    ),
    "scale": lambda s, c, q: scale.bench_reconcile_and_memory(s, c, 500 if q else 10_000),
    "server": lambda s, c, q: scale.bench_server_time(s, c, 300 if q else 5_000),
    "instructions": lambda s, c, q: instructions.bench_instructions(s, 50 if q else 1_000),
    "client": lambda s, c, q: client.bench_client(s, c, 500 if q else 10_000),
}

NOTES = """
## How to read these

- **ratio** compares a row with the first row of its group, measured in the same run:
  the raw EVALSHA baseline (sequential, processes), `limits`' FixedWindow (peers), the
  same check on an empty ledger (seed), the trivial script (server). Where rows run in
  interleaved rounds (sequential, processes, peers, and gate.check in seed, beside
  the trivial script at each ledger size) the ratio is paired: each round
  measures every operation back to back, and the ratio is the median over the rounds
  of the round's own ratio, so a slow patch of the shared machine (they last seconds
  to minutes, and move a whole run's figures by ±20 %) divides out of each round
  rather than landing on one operation; the value column is the throughput over all
  rounds, so value over the baseline's value can differ from the ratio by a little.
- **sequential**: one process, one connection, 20 interleaved rounds of 1,000 calls per
  operation. `reserve` holds tokens under a lease; `commit` settles those same
  reservations.
- **4 processes**: four processes run each operation at the same time, over 1,000
  ports, in 16 interleaved rounds of half a second; throughput is their sum, the
  median over the rounds.
- **batched**: `gate.check_many` with 1,000 ports per call (one script per shard,
  pipelined: one round trip).
- **peers**: `limits` keeps one counter per window; a quota reservation checks the hard
  cap with open holds, keeps a lease, counts day, week and month and per feature, and
  its commit appends the ledger event. The four run in 20 interleaved rounds, as the
  sequential rows; the reserves are not committed, so the port's open set grows to
  10,000 holds over the run. The seed's check reads the budget and SUMs the
  port's ledger rows of the period in Postgres, so it grows with the ledger while
  `gate.check` never reads Postgres. At each ledger size `gate.check` runs in rounds
  interleaved with the trivial script, and its ratio is its paired ratio to the
  script there over the same at 0 rows: filling the ledger leaves Postgres busy on
  the shared machine for a while (a run of 2026-11-26 measured gate.check 0.79× at
  10,000 rows when timed alone, right after the fill).
- **drain**: events waiting in the shard streams (1,000 ports) moved into the ledger:
  XREADGROUP, COPY into a staging table, one INSERT … ON CONFLICT DO NOTHING that also
  updates the rollups, COMMIT, XACK, trim; while Postgres stores one batch, the next is
  read and turned into COPY text and the one before is acknowledged. **lag**: events
  offered at a fixed rate (pipelined XADDs of the entries the scripts write, so that
  the load generator needs no CPU for gate calls) while `quota cron` + `quota worker`
  drain them; the age of the oldest undrained event sampled every 200 ms. With a
  one-second schedule it cannot be much below ~1 s.
- **scale**: reconciliation reads counters and stream positions, catches the drain up,
  sums the ledger and corrects, for every active port. Memory is the INFO used_memory
  delta after 10,000 ports each got a budget and usage in two features.
- **server**: Redis-side time per call from INFO commandstats (EVALSHA for the trivial
  script, FCALL for the gate's functions).
- **instructions**: instructions a private redis-server (under valgrind's callgrind)
  executes per call, from the request's first byte to its reply. Unlike the
  microseconds above they repeat to ~1 % from run to run on this VM, so they are the
  figure to judge a change to a Lua function by; cache misses are not in them.
- **client**: the client's own work per call (validation, keys, packing the FCALL, the
  result, metrics), with the FCALL answered in-process by the reply Redis gave the same
  call: no I/O, so it repeats to a few per cent; the best of five loops. The figure to
  judge a change to the gate's Python by. Between real round trips the same code runs
  2-3× slower (cold caches).
"""


# (target, row name it reads, "ratio" or "value", goal, True if higher is better)
TARGETS: list[tuple[str, str, str, float, bool]] = [
    ("check, sequential, vs raw EVALSHA", "gate.check", "ratio", 0.85, True),
    ("reserve, sequential, vs raw EVALSHA", "gate.reserve", "ratio", 0.85, True),
    ("commit, sequential, vs raw EVALSHA", "gate.commit", "ratio", 0.75, True),
    ("record, sequential, vs raw EVALSHA", "gate.record", "ratio", 0.75, True),
    (
        "check, 4 processes, vs the same on raw EVALSHA",
        "gate.check, 1,000 ports",
        "ratio",
        0.8,
        True,
    ),
    ("reserve, 4 processes", "gate.reserve, 1,000 ports", "ratio", 0.8, True),
    ("commit, 4 processes", "gate.commit, 1,000 ports", "ratio", 0.8, True),
    ("record, 4 processes", "gate.record, 1,000 ports", "ratio", 0.8, True),
    ("batched check, decisions/s", "gate.check_many, 1,000 ports per call", "value", 100_000, True),
    (
        "check at 1M ledger rows vs empty (paired throughput ratio)",
        "gate.check, 1,000,000 ledger rows",
        "ratio",
        1 / 1.1,
        True,
    ),
    ("check faster than limits FixedWindow", "gate.check (same run)", "ratio", 1.0, True),
    ("reserve faster than limits FixedWindow", "gate.reserve (same run)", "ratio", 1.0, True),
    ("Redis time per reserve, µs", "Redis time per call: reserve", "value", 15, False),
    ("Redis memory per active port, bytes", "Redis memory per active port", "value", 1024, False),
    ("drain, events/s, 1 process", "drain 300,000 queued events, 1 process", "value", 50_000, True),
    (
        "drain, events/s, 2 processes",
        "drain 300,000 queued events, 2 processes",
        "value",
        50_000,
        True,
    ),
    ("lag p99 at 20,000 events/s, s", "oldest undrained event, p99", "value", 2.0, False),
    ("reconcile 10,000 ports, s", "reconcile 10,000 active ports", "value", 10.0, False),
]


def _goal_text(field: str, goal: float, higher: bool, unit: str = "") -> str:
    sign = "≥" if higher else "≤"
    return f"{sign} {goal:.2f}×" if field == "ratio" else f"{sign} {fmt(goal)} {unit}".rstrip()


def with_goals(rows: list[Row]) -> list[Row]:
    """Each row a target reads, with its goal in its note: TARGETS is the one place a
    goal is written."""
    goals = {name: (field, goal, higher) for _, name, field, goal, higher in TARGETS}
    out = []
    for r in rows:
        if r.name in goals:
            goal = "goal " + _goal_text(*goals[r.name], r.unit)
            r = replace(r, note=f"{r.note}; {goal}" if r.note else goal)
        out.append(r)
    return out


def targets_markdown(rows: list[Row]) -> str:
    """Where each target stands in this run (targets whose rows did not run are left out)."""
    by_name = {r.name: r for r in rows}
    lines = [
        "",
        "## Targets",
        "",
        "| target | goal | this run | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, name, field, goal, higher in TARGETS:
        row = by_name.get(name)
        got = None if row is None else (row.ratio if field == "ratio" else row.value)
        if got is None:
            continue
        met = got >= goal if higher else got <= goal
        shown = f"{got:.2f}×" if field == "ratio" else fmt(got)
        goal_text = _goal_text(field, goal, higher)
        lines.append(f"| {label} | {goal_text} | {shown} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


ANALYSIS = """
## Where the time goes, and what is left

- **Client.** A hot-path call is one FCALL, packed by hiredis, written to a socket
  owned by the calling thread and read back by that thread's own hiredis reader
  (`quota/_calls.py`; redis-py still opens the connection: TLS, AUTH, SELECT). The
  socket is blocking with its timeout kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO):
  CPython polls before every send and recv on a socket with a timeout, and those two
  extra system calls cost ~2-3 µs of CPU and ~4 µs of wall time per call; replies are
  read into one reusable buffer, and a single call runs its own short retry loop
  (~3.4k fewer client instructions than the batch path's closures). The *client* rows
  time the client's own work with the FCALL answered in-process (packing included):
  check 7.7 → 6.2 µs, reserve 9.8 → 9.2, commit 12.8 → 10.0, record 10.6 → 9.2 from
  987ec38 to the changes of 2026-11-26 (the same harness on both, twice each, within
  2 %): `Decision` and `UsageResult` became named tuples, ~0.3 µs to build where a
  frozen dataclass took ~1.3; keys are passed as tuples instead of closures; commit
  takes a reservation this process made from its own record instead of parsing the id
  (reserve pays ~0.3 µs to keep it). Between blocking round trips that Python runs 2-3×
  slower than in such a loop (cold caches): under perf, libpython is ~57 % of a
  sequential client's CPU and the kernel ~35 %. The rest of the client's 28-45 µs of
  CPU per call is the two system calls and waking up.
  The baseline row keeps plain `redis.evalsha`, which is what users of redis-py pay.
  A second round that day took out repeated work: an identifier seen valid is not
  matched against its pattern again (a bounded set; two labels 1.12 → 0.26 µs), a
  port id the gate has keyed is not checked again, and a port's fixed keys are built
  once with its `PortKeys` (three reads 659 → 25 ns). With the cache on and off
  alternating in one process, reserve's client work fell 7 %, commit's 8 %, record's
  12 % (the four-process rows' client CPU per call moves more than that with the VM).
- **check_many** is now bound by Redis more than by the client. Per 1,000 ports on the
  slow VM of that afternoon (a timeline of one batch): Redis ran 7.9 ms of its 10.3,
  the client built and sent the 16 shard calls in 3.3 ms while Redis worked and parsed
  replies as they came. The client's work per port fell 1.27-1.29× (old and new gate
  alternating in one process, replies replayed: the *client* section's check_many
  row), by no longer checking each port id and building its five keys on every call.
  Redis's per port fell 35.7k → 33.6k instructions: check and check_many read a port's
  next lease end only when it holds something (an HMGET field is ~2.5k).
- **Redis.** Read the *instructions* rows (they repeat; the µs rows move ±50 %). A
  function call costs ~10k instructions before it runs, ~1.3k per key or argument,
  ~4k per `redis.call` plus its reply's conversion to Lua (`TIME` ~6.5k, each `HMGET`
  field ~2.5k), ~5k for a table reply where a string costs 0.3k, ~2-4k per number
  turned into a string; creating a key with an expiry (`SET NX PX`) ~13k. A reserve
  is TIME, HMGET (3 fields), HGET, ZADD NX and HINCRBY with 11 keys and arguments; a
  commit HGET, XADD, ZREM, HINCRBY, SET and six HINCRBYs (total and feature, in each
  of the three periods) with 16. Measured piece by piece on a reserve (callgrind,
  each command added to an empty function with the same arguments): the call with its
  11 arguments 28.6k, TIME 6.8k, the HMGET 12.1k, the usage HGET 2.9k, ZADD 13.1k,
  HINCRBY 6.8k, and the Lua between them ~21k (the reply string ~2.9k of it). A
  commit, likewise: the call with its 15 arguments 33.1k, HGET 5.2k, XADD 10.7k, ZREM
  4.2k, HINCRBY 6.6k, SET EX 13.3k, the six usage HINCRBYs 42.2k, and ~24k of Lua in
  pieces of 0.4-2.7k each (matching the stream id's time 2.7k, a number formatted for
  the reply 2.0k, the clock guard 1.4k, ...).
  ZADD grows with the port's open set while Redis keeps it as a listpack (up to 128
  members): a new lease is the latest, so it goes in at the tail after a scan of every
  member, ~340 instructions each; with commit's ZREM of the oldest hold (at the head,
  found at once) the pair costs 16.6k beside 10 holds, 32.3k beside 50 and 59.5k beside
  120. The *server* rows' reserve runs beside 0-49 holds on its one port, so it pays
  ~8k of that; the *instructions* rows spread holds over 100 ports.
- **What cut it** (instructions per call; 7027e60 → b16d438 → 82e1d9a → now: check
  110k → 72k → 62k → 62k, reserve 171k → 121k → 105k → 91k, commit 243k → 191k → 147k
  → 138k, record 191k → 143k → 99k → 99k): one function library instead of EVALSHA
  scripts; one clock argument; the budget copy as one field passed through; then
  replies as one '|'-joined string instead of a table; one shared Lua table for the
  budget instead of a fresh one per call; parsed budget copies memoised by their
  string (bounded; budgets repeat across ports); stream entries as one packed field,
  sent pre-joined by the client (XADD and the FCALL cost per argument); commit and
  record taking the event's time from its stream id (XADD stamps it with the server's
  clock) instead of a TIME call; commit and record reading only the budget copy, and
  the soft-alert marker read only above the soft cap; arguments the client can join
  sent joined. Last, a reservation is only its member of the port's open set: its id
  (`<hex>|<tokens>|<feature>|<user>|<port>`) carries what commit needs, so reserve
  creates no key (its SET NX PX was ~15k of 106k) and commit reads none (no GET); an
  ended lease's member moves to a lapsed set on the purge, so late commits and
  releases still find it.
- **The drain** (one process) waits on Postgres: of ~4.4 s for 300,000 events, the
  INSERT … ON CONFLICT with its rollups took ~2.3 s (~7.5 µs a row: the primary key,
  the (port, time) index and the partition routing), psycopg formatting COPY rows ~0.6-
  0.9 s. Since 2026-11-26 the next batch is read and parsed, and the last acknowledged,
  while Postgres stores one (they ran with Postgres idle), and a value the gate wrote is
  checked by one regular expression and copied with its '|' turned into tabs (the
  staging columns follow the stream value's order) instead of being parsed into a
  tuple and formatted again: 58-64k → 71-78k events/s on the same VM. On the
  afternoon's slower VM the writer was busy 86 % of a one-process drain (storing
  batches took 7.75 of 9.0 s for 300,000 events, Postgres ~20 µs of CPU a row), and
  the ledger's (port_id, occurred_at) index was 30-40 % of the INSERT statement: per
  5,000 rows 80-88 ms with it, 49-62 ms without, dropped and rebuilt three times; the
  same index with COLLATE "C" took 77 ms against 81, so it is not text comparison.
  Reconciliation's per-port sums need it; it stays.
- **Four processes are CPU-bound on the whole machine, not on Redis alone.** Four
  clients and Redis share 2 cores. The four-process rows' notes give what each call
  costs the machine in CPU (the clients' process time; Redis's, from INFO cpu): Redis
  spends ~13-15 µs per call on network I/O alone (read, parse, reply, epoll), a client
  28-45 µs, mostly in its two system calls and the scheduler. In the two full runs
  after the changes of 2026-11-26 a call cost 63-64 µs of CPU for the baseline, 47-49
  for a check, 57-58 for a reserve, 59-61 for a record and 68-69 for a commit (79 the
  day before): by CPU alone commit would reach ~0.92×, and it measures below that, as
  clients wait on the one Redis thread longest for the longest function. Commit is the
  hot-path row nearest its goal, and the noisiest: its rounds range ±25 % (the
  baseline's ±12 %), and the same code measured 0.76, 0.78, 0.81, 0.84, 0.85, 0.85 and
  0.99× in seven runs that day (0.69-0.85×, median 0.79, in nine runs of the day
  before's code).
  Two experiments that day: commit without its settled-marker SET (13.6k of its 137k
  instructions) measured 0.92-0.95× in three runs, but the unchanged code also reached
  0.99× once, so one command's worth is within the noise; and 48 rounds of 1/6 s
  instead of 16 of 1/2 s gave commit 0.87-0.99× and reserve and record 1.01-1.08× in
  three runs, an effect of the slicing I could not explain, so the harness keeps 16.
- **Ratios are paired by round.** Runs an hour apart moved whole-run ratios by ±0.1
  for the same code (a slow patch of the VM lasts seconds to minutes). Since 2026-11-26
  the sequential, four-process and peers ratios are the median over interleaved
  rounds of each round's own ratio (see "How to read these"); before, a slow patch
  that fell on one operation's slice moved its ratio alone.
- **What is left.** Commit's floor is its work: three periods × (total + feature)
  counters, the hold, the settled marker and the event are 11 commands, and each
  remaining one is what makes it correct (the settled marker is what makes a retried
  commit count once). Moving more changes the data layout or the contract: the budget
  period's running total in the port hash (drops the usage HGET and a key from check
  and reserve, adds a write to commit and record); per-feature counters only, with the
  total summed on read (drops three HINCRBYs from commit and record, makes check and
  status O(features)); sending only the budget period's usage key to check and
  reserve (the client learns the period; ~2.6k).
  Tried later on 2026-11-26 and not kept (callgrind unless said): reserve holding
  first (HINCRBY answers the holds, so no HMGET of three fields) saved 3.5k of 92k
  before its purge and refusal paths were even written; lease ends stored negated, so
  that a new hold goes at the head of the listpack, moved the scan to commit's ZREM of
  the oldest (reserve + commit: -1k beside 10 holds, -7k beside 50, -16k beside 120);
  check_many's replies joined into one string instead of a list: -0.3k per port;
  settled reservations as fields of a per-port hourly hash instead of a key each
  (HSET of the member and a sentinel, EXPIRE when the hash is new): commit -3.7k and
  ~3× less memory per settled reservation, but four-process commit measured 0.87,
  0.80, 0.79× against 0.77, 0.82× for the unchanged code in alternating runs (noise),
  and it needs the client and Redis to agree on the hour and every process the same
  QUOTA_SETTLED_SECONDS. Memory is the reason to take it up again.
- **This machine varies by day.** On 2026-11-26 the VM ran the same Redis 7.0.15
  binary ~2-3× slower than on 2026-11-25, varying through the day: the trivial script
  took 4-8 µs of Redis time per sequential call against 1.5 (a pipelined trivial EVAL
  1.9 µs early that day), and under the four-process load in a slow phase the scripts
  themselves took 4.0 µs (trivial), 14 (check), 22 (reserve), 34 (commit) and 23
  (record) per call (commandstats; the four-process notes now give it); the client's
  round trip was ~1.5-2× slower. Ratios hold across such days; absolute rows (Redis µs
  per reserve, check_many, the drain, the lag) do not: compare this run's baseline
  with another run's before comparing them. Old (82e1d9a) and new code alternating
  twice that day: sequential reserve 0.86/0.78× → 0.85/0.92×, four processes reserve
  0.80/0.87× → 0.83/0.94×, commit 0.70/0.74× → 0.64/0.76× (unpaired ratios, which is
  why they are paired now).
  Later that day the VM was slower again, by as much: the *client* rows measured
  8-30 µs where they had measured 6-10, the trivial script took 5.8-9.9 µs of Redis
  time per call (2.6-4.9 in the morning's full runs), Postgres' SUM over 1M ledger rows
  ran 5.4-6.9 times a second (11.8) and a 5,000-row ledger INSERT took ~95 ms (~19 µs
  a row, ~7.5 in the morning), with the same instruction counts to within 1 %. In
  that state the absolute rows missed (Redis per reserve 23.6-36.9 µs, the drain
  34k events/s from one process and 38-43k from two, check_many 87-98k decisions/s)
  while the ratio rows held; no change to the code could have moved the first two by
  the 1.5-2.5× asked.
"""


def run(
    settings: Settings, *, quick: bool, only: list[str], output: Path | None, command: str
) -> list[Row]:
    console = Console(width=None if sys.stdout.isatty() else 150)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rows: list[Row] = []
    try:
        for name in only or list(SECTIONS):
            console.print(f"[bold]{name}[/] ...")
            rows += SECTIONS[name](settings, client, quick)
    finally:
        reset(settings, client)
    rows = with_goals(rows)
    table = Table(title="quota benchmarks" + (" (quick)" if quick else ""), title_justify="left")
    for col in ("section", "measurement", "value", "unit", "p50 µs", "p99 µs", "ratio"):
        table.add_column(
            col, justify="left" if col in ("section", "measurement", "unit") else "right"
        )
    for r in rows:
        table.add_row(
            r.section,
            r.name,
            fmt(r.value),
            r.unit,
            fmt(r.p50_us),
            fmt(r.p99_us),
            "" if r.ratio is None else f"{r.ratio:.2f}×",
        )
    console.print(table)
    if output is not None:
        write_markdown(
            rows, output, settings, client, command, targets_markdown(rows) + NOTES + ANALYSIS
        )
        console.print(f"written to {output}")
    client.close()
    return rows
