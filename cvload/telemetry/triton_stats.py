"""Triton's statistics API (``GET /v2/models/stats``, gRPC ``ModelStatistics``) diffed into per-stage times.

The API keeps cumulative counts and nanoseconds per model and stage; the difference of two snapshots is the time
each model of the pipeline (cosyvoice2, tensorrt_llm, token2wav, audio_tokenizer, speaker_embedding, vocoder:
whatever the server has) spent queued and computing between them. For a decoupled (streaming) model Triton
counts only the hand-off in ``execute()``, not the stream: its compute_infer is small by construction.
"""

from __future__ import annotations

from typing import Any

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
# Front models first, then the stages they call, in pipeline order; other models follow by name.
PIPELINE_ORDER = ("cosyvoice2", "cosyvoice2_dit", "cosyvoice3", "audio_tokenizer", "speaker_embedding",
                  "tensorrt_llm", "token2wav", "vocoder")
_COUNTS = ("success", "fail", *STAGES)

Counters = dict[str, Any]  # normalized snapshot of one model: ints, see normalize_stats


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    try:
        return int(value)  # the gRPC JSON form carries int64 as strings
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: expected a number, got {value!r}") from exc


def _duration(stat: Any, where: str) -> tuple[int, int]:
    if stat is None:
        return 0, 0
    if not isinstance(stat, dict):
        raise ValueError(f"{where}: expected {{count, ns}}, got {type(stat).__name__}")
    return _int(stat.get("count"), f"{where}.count"), _int(stat.get("ns"), f"{where}.ns")


def normalize_stats(data: Any) -> dict[tuple[str, str], Counters]:
    """The statistics JSON (HTTP form, or gRPC ``as_json``) as ints per (model, version); ValueError if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("model_stats"), list):
        raise ValueError("statistics JSON has no 'model_stats' list (is this Triton's /v2/models/stats?)")
    out: dict[tuple[str, str], Counters] = {}
    for i, entry in enumerate(data["model_stats"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"model_stats[{i}] has no model name")
        name, version = entry["name"], str(entry.get("version", ""))
        where = f"model_stats[{name}]"
        inference = entry.get("inference_stats") or {}
        if not isinstance(inference, dict):
            raise ValueError(f"{where}.inference_stats is not an object")
        counters: Counters = {
            "inferences": _int(entry.get("inference_count"), f"{where}.inference_count"),
            "executions": _int(entry.get("execution_count"), f"{where}.execution_count"),
        }
        for stat in _COUNTS:
            counters[stat] = _duration(inference.get(stat), f"{where}.{stat}")
        batches: dict[int, dict[str, tuple[int, int]]] = {}
        for j, batch in enumerate(entry.get("batch_stats") or []):
            if not isinstance(batch, dict):
                raise ValueError(f"{where}.batch_stats[{j}] is not an object")
            size = _int(batch.get("batch_size"), f"{where}.batch_stats[{j}].batch_size")
            batches[size] = {s: _duration(batch.get(s), f"{where}.batch_stats[{j}].{s}") for s in STAGES[1:]}
        counters["batches"] = batches
        out[(name, version)] = counters
    return out


def _mean_ms(after: tuple[int, int], before: tuple[int, int]) -> tuple[int, float | None]:
    count, ns = after[0] - before[0], after[1] - before[1]
    return count, (ns / count / 1e6 if count > 0 else None)


def _order(key: tuple[str, str]) -> tuple[int, str, str]:
    name = key[0]
    rank = PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER else len(PIPELINE_ORDER)
    return rank, name, key[1]


def diff_normalized(before: dict[tuple[str, str], Counters] | None, after: dict[tuple[str, str], Counters],
                    *, active_only: bool = False) -> list[dict[str, Any]]:
    """Per-model stage breakdown between two normalized snapshots (``before`` None: since the server started)."""
    zero: Counters = {"inferences": 0, "executions": 0, "batches": {}, **{s: (0, 0) for s in _COUNTS}}
    rows = []
    for key in sorted(after, key=_order):
        cur, prev = after[key], (before or {}).get(key, zero)
        if cur["success"][0] < prev["success"][0] or cur["executions"] < prev["executions"]:
            prev = zero  # counters went back: the model (or server) was reloaded in between
        count, request_ms = _mean_ms(cur["success"], prev["success"])
        row: dict[str, Any] = {
            "model": key[0],
            "version": key[1],
            "count": count,
            "failures": cur["fail"][0] - prev["fail"][0],
            "inferences": cur["inferences"] - prev["inferences"],
            "executions": cur["executions"] - prev["executions"],
            "request_ms": request_ms,
        }
        busy_ns = 0
        for stage in STAGES:
            row[f"{stage}_ms"] = _mean_ms(cur[stage], prev[stage])[1]
            busy_ns += cur[stage][1] - prev[stage][1]
        row["busy_s"] = busy_ns / 1e9  # queued + computing, summed over requests: where the time went
        batches = []
        for size in sorted(cur["batches"]):
            b_cur, b_prev = cur["batches"][size], prev["batches"].get(size, {})
            n, infer_ms = _mean_ms(b_cur["compute_infer"], b_prev.get("compute_infer", (0, 0)))
            if n <= 0:
                continue
            batch = {"batch_size": size, "count": n}
            for stage in STAGES[1:]:
                batch[f"{stage}_ms"] = _mean_ms(b_cur[stage], b_prev.get(stage, (0, 0)))[1]
            batches.append(batch)
        row["batches"] = batches
        if active_only and not (row["count"] or row["failures"] or row["executions"]):
            continue
        rows.append(row)
    total_busy = sum(r["busy_s"] for r in rows)
    for r in rows:
        r["busy_share"] = r["busy_s"] / total_busy if total_busy > 0 else None
    return rows


def stats_diff(before: dict | None, after: dict, *, active_only: bool = False) -> list[dict[str, Any]]:
    """Per-model stage times between two statistics JSON snapshots (``GET /v2/models/stats`` shape).

    One row per model: ``count`` (successful requests), ``failures``, ``executions``, mean ``request_ms``,
    ``queue_ms``, ``compute_input_ms``, ``compute_infer_ms``, ``compute_output_ms`` (None where no request ran),
    ``busy_s`` and its ``busy_share`` of all models, and ``batches`` (per batch size: count and mean compute
    times). Raises ValueError when a snapshot is malformed.
    """
    return diff_normalized(None if before is None else normalize_stats(before), normalize_stats(after),
                           active_only=active_only)
