"""The tune's console: one table row per candidate as it is judged (stdout), each level's verdict as it comes
(stderr), and the answer at the end; ``--json`` prints tune.json instead of the table."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from cvload.results.tune_file import cell_text
from cvload.tune.deployments import Change
from cvload.tune.runner import Candidate, Tuner
from cvload.tune.space import knobs_text


class LevelLines:
    """A SweepView that says one line per judged level (stderr), nothing else."""

    def __init__(self, out: TextIO | None, indent: str = "      ") -> None:
        self.out, self.indent = out, indent

    def preparing(self, config: Any) -> None: ...

    def attach(self, sweep: Any) -> None: ...

    def level_started(self, sweep: Any, level: Any) -> None: ...

    def level_judged(self, sweep: Any, level: Any) -> None:
        if self.out is None:
            return
        s = level.summary or {}
        p95 = ((s.get("metrics") or {}).get("first_chunk_latency_ms") or {}).get("p95")
        verdict = {True: "pass", False: "FAIL", None: "-"}[level.slo_passed]
        shown = int(level.value) if level.kind == "concurrency" else level.value
        print(f"{self.indent}level {shown:g}: first chunk p95 "
              f"{'-' if p95 is None else f'{p95:.0f} ms'}, {verdict}", file=self.out, flush=True)

    def detach(self, sweep: Any) -> None: ...

    def final(self, sweep: Any, result: dict[str, Any]) -> None: ...


class TuneConsole:
    def __init__(self, *, json_output: bool = False, quiet: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.json_output, self.quiet = json_output, quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.names: list[str] = []
        self.costs: list[str] = []

    def _row(self, cells: list[str]) -> str:
        widths = [4, *(max(len(n), 5) for n in self.names), 10, 11, *(max(len(c), 6) for c in self.costs), 7]
        return "  ".join(c.rjust(w) for c, w in zip(cells[:-1], widths)) + "  " + cells[-1]

    def started(self, tuner: Tuner) -> None:
        self.names = list(tuner.space.knobs)
        self.costs = list(tuner.space.costs)
        if self.json_output:
            return
        sp = tuner.space
        print(f"cvload tune: {sp.file} on the {tuner.deployment.name}: {len(sp.knobs)} knob(s), {sp.size} "
              f"candidate(s) ({len(sp.feasible())} within the constraints), search {tuner.search.method}"
              f"{'' if tuner.search.method == 'exhaustive' else f' (seed {sp.seed}, {tuner.search.total()} trials)'}"
              f"; objectives {', '.join(tuner.base.slo)}; results {tuner.out_dir}", file=self.out, flush=True)
        print(self._row(["#", *self.names, "capacity", "bracket", *self.costs, "time", "status"]), file=self.out,
              flush=True)
        for c in tuner.candidates:  # resumed
            self.candidate_done(tuner, c)

    def candidate_started(self, tuner: Tuner, candidate: Candidate, change: Change) -> None:
        if self.quiet or self.json_output:
            return
        again = f" (measured again, {candidate.repeat} of {tuner.repeat})" if candidate.repeat else ""
        print(f"  candidate {candidate.number}{again}: {knobs_text(candidate.knobs)}: {change.describe()}", file=self.err, flush=True)

    def candidate_done(self, tuner: Tuner, candidate: Candidate) -> None:
        if self.json_output:
            return
        bracket = f"[{cell_text(candidate.bracket[0])}, {cell_text(candidate.bracket[1])}]"
        status = candidate.status + (" (baseline)" if candidate.baseline else "") + (
            f" (best, measured again: {candidate.repeat} of {tuner.repeat})" if candidate.repeat else "") + (
            f": {candidate.reason}" if candidate.reason and candidate.status != "measured" else "")
        cells = [str(candidate.number), *(cell_text(candidate.knobs.get(n)) for n in self.names),
                 cell_text(candidate.capacity), bracket, *(cell_text(candidate.cost.get(c)) for c in self.costs),
                 f"{candidate.elapsed_s or 0:.0f}s", status.splitlines()[0][:160]]
        print(self._row(cells), file=self.out, flush=True)

    def sweep_view(self) -> LevelLines:
        return LevelLines(None if self.quiet or self.json_output else self.err)

    def final(self, tuner: Tuner, result: dict[str, Any]) -> None:
        if self.json_output:
            print(json.dumps(result, indent=2), file=self.out, flush=True)
            return
        best, base = result["best"], result["baseline"]
        print(f"stopped: {result['stopped_because']} ({result['elapsed_s']:.0f} s)", file=self.out)
        if best is None:
            closest = result.get("closest")
            print("no candidate met the objectives" + (f"; closest: {closest['text']}" if closest else ""),
                  file=self.out, flush=True)
            return
        knobs = knobs_text(best["knobs"])
        spread = best["spread"]
        print(f"best: candidate {best['number']} ({knobs}): capacity {cell_text(best['capacity'])} "
              f"{tuner.kind == 'concurrency' and 'streams' or 'req/s'}, bracket [{cell_text(best['bracket'][0])}, "
              f"{cell_text(best['bracket'][1])}]; re-measured {len(best['repeats'])}x: "
              f"{', '.join(cell_text(r['capacity']) for r in best['repeats']) or '-'} (spread {cell_text(spread['min'])}"
              f"-{cell_text(spread['max'])}, median {cell_text(spread['median'])})", file=self.out)
        if base is not None:
            print(f"baseline (the deployment's own knobs): candidate {base['number']}, capacity "
                  f"{cell_text(base['capacity'])} ({base['status']})", file=self.out)
        print(f"pareto front (capacity vs {tuner.space.pareto_cost or 'nothing'}): candidates "
              f"{', '.join(map(str, result['pareto']))}", file=self.out)
        print(f"best configuration: {tuner.out_dir / 'best'}", file=self.out, flush=True)
