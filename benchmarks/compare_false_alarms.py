"""Does `cvload compare` cry wolf, and does it catch a real change? Pairs of real runs on the emulator.

Each run is a whole `cvload run --emulator --profile fixed` (its own embedded server; the ``fixed`` profile sends
the first chunk 200 ms after the request arrives, then one every 100 ms), short: ``--streams`` x ``--requests``.

* same-config pairs: two runs of the same configuration. `cvload compare` must not flag any of them.
* shifted pairs: a base run against a run with ``--profile-set fixed_first_s=0.22`` (+20 ms to the first chunk,
  +10%). `cvload compare` must flag every one of them, on first_chunk.

The shifted pairs reuse the same-config pairs' first runs as their base (each pair its own base), so ``--pairs``
N costs 3 N runs. Prints one line per pair and the counts.

    .venv/bin/python -m benchmarks.compare_false_alarms --pairs 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHIFT = "fixed_first_s=0.22"


def cvload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvload", *args], capture_output=True, text=True, check=False)


def measure(out: Path, streams: int, requests: int, *extra: str) -> Path:
    """One short `cvload run` on its own embedded emulator; its results folder."""
    done = cvload("run", "--quiet", "--emulator", "--profile", "fixed", "--num-tasks", str(streams),
                  "--requests", str(requests), "--out", str(out), *extra)
    if done.returncode != 0:
        raise SystemExit(f"cvload run {out.name} failed ({done.returncode}):\n{done.stderr}")
    return out


def compare(base: Path, new: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cvload("compare", "--json", str(base), str(new), *extra)
    if done.returncode not in (0, 3):
        raise SystemExit(f"cvload compare failed ({done.returncode}):\n{done.stderr}")
    return done.returncode, json.loads(done.stdout)


def describe(result: dict[str, Any]) -> str:
    rows = {r["metric"]: r for r in result["comparisons"][0]["rows"]}
    first = rows["first_chunk.p95"]
    flagged = [r["metric"] for r in rows.values() if r["verdict"] == "regression"]
    uncertain = [r["metric"] for r in rows.values() if r["verdict"] == "uncertain"]
    return (f"first_chunk.p95 {first['base']:.1f} -> {first['new']:.1f} ms ({first['percent'] * 100:+.1f}%)  "
            f"regressions: {', '.join(flagged) or '-'}  uncertain: {', '.join(uncertain) or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="keep the results folders here")
    parser.add_argument("--compare-only", action="store_true",
                        help="judge the runs already in --out again (e.g. after changing compare) without running")
    parser.add_argument("--json-out", type=Path, default=None, help="write the counts and every verdict as JSON")
    args = parser.parse_args(argv)

    if args.compare_only and args.out is None:
        parser.error("--compare-only needs --out (the folder of an earlier run of this benchmark)")
    root = args.out or Path(tempfile.mkdtemp(prefix="cvload-compare-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    same_flagged = shifted_flagged = 0
    report: dict[str, Any] = {"pairs": args.pairs, "streams": args.streams, "requests": args.requests,
                              "same": [], "shifted": []}
    for i in range(args.pairs):
        base, again, shifted = root / f"base{i}", root / f"same{i}", root / f"shift{i}"
        if not args.compare_only:
            measure(base, args.streams, args.requests)
            measure(again, args.streams, args.requests)
            measure(shifted, args.streams, args.requests, "--profile-set", SHIFT)
        code, same = compare(base, again)
        same_flagged += code == 3
        print(f"same    pair {i}: {'FLAGGED' if code == 3 else 'ok     '}  {describe(same)}", flush=True)
        code, shift = compare(base, shifted)
        shifted_flagged += code == 3
        print(f"shifted pair {i}: {'flagged' if code == 3 else 'MISSED '}  {describe(shift)}", flush=True)
        report["same"].append(same)
        report["shifted"].append(shift)
    report.update(same_flagged=same_flagged, shifted_flagged=shifted_flagged)
    print(f"\nsame configuration: {same_flagged} of {args.pairs} pairs flagged (want 0)")
    print(f"first chunk +20 ms:  {shifted_flagged} of {args.pairs} pairs flagged (want {args.pairs})")
    print(f"({args.streams} streams x {args.requests} requests per run, {time.monotonic() - started:.0f} s; "
          f"results in {root})")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same_flagged == 0 and shifted_flagged == args.pairs else 1


if __name__ == "__main__":
    sys.exit(main())
