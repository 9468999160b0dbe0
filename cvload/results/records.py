"""What one request produced: the timed record every view (summary, dashboard, files, objectives) reads.

Times are ``time.monotonic()`` seconds stamped when the bytes arrived; offsets in the record are relative to
``sent`` so a record stands on its own once written to ``records.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Error kinds: each counted on its own so a run can say *how* it failed.
ERR_SERVER = "server_error"  # the server answered with an error response
ERR_TIMEOUT = "timeout"  # --request-timeout passed before the final response
ERR_CONNECTION = "connection"  # could not reach the server / connection lost
ERR_NO_FINAL = "no_final"  # the stream ended without its final response
ERR_PROTOCOL = "protocol"  # a response cvload could not understand (missing tensor, bad shape)
ERR_CANCELLED = "cancelled"  # stopped by the user (Ctrl-C) before it finished
# Refused by a server at its concurrency cap (gRPC RESOURCE_EXHAUSTED, HTTP 429/503), e.g. CosyVoice's Python
# runtime past its --max_conc: load the server was never asked to carry, not a failure of synthesis.
ERR_REJECTED = "rejected"
# Sent inside the measurement window but still running when the wait after it (--drain) ended: a failure whose
# ``end_offset`` is the time waited, a lower bound of its latency (never left out: the slowest requests).
ERR_INCOMPLETE = "incomplete"
# Said by a request whose gRPC stream a proxy reset after it carried more than its request-body limit (nginx's
# client_max_body_size, 1 MB by default, counts a whole HTTP/2 stream): the summary counts these and says so.
PROXY_BODY_LIMIT = ("a proxy between cvload and the server limits the request body of a stream: nginx "
                    "`client_max_body_size 0;` in the gRPC location, or `--stream-per-request`")
ERROR_KINDS = (ERR_SERVER, ERR_TIMEOUT, ERR_CONNECTION, ERR_NO_FINAL, ERR_PROTOCOL, ERR_CANCELLED, ERR_REJECTED,
               ERR_INCOMPLETE)
# Abandoned by its listener on purpose (--barge-in, cvload/load/barge_in.py): neither ok nor failed, counted on its own
# line; its first chunk was heard, so it counts in first-chunk latency, not in completion latencies.
ERR_BARGED_IN = "barged_in"
OUTCOME_KINDS = (*ERROR_KINDS, ERR_BARGED_IN)  # every error_kind a record may hold (codes in records.columns)

# Audio sanity flags: the request finished but its audio is broken; each makes the request count as failed.
FLAG_TOO_SHORT = "audio_too_short"
FLAG_SILENT = "audio_silent"
FLAG_NONFINITE = "audio_nonfinite"
FLAG_CLIPPING = "audio_clipping"
# The words heard (an ASR transcript, cvload.listen.content) differ from the target text by more than --max-content-error.
FLAG_CONTENT_MISMATCH = "content_mismatch"
AUDIO_FLAGS = (FLAG_TOO_SHORT, FLAG_SILENT, FLAG_NONFINITE, FLAG_CLIPPING, FLAG_CONTENT_MISMATCH)


@dataclass
class RequestRecord:
    """One finished (or failed) request."""

    index: int  # order of sending within the run
    request_id: str
    item_id: str  # which input item (utterance id)
    worker: int  # closed-loop worker, or -1 in open loop
    server: str
    text: str
    sent: float  # monotonic time just before the request left
    intended: float | None = None  # open loop: when the schedule wanted it sent (coordinated omission)
    chunk_offsets: list[float] = field(default_factory=list)  # arrival of each audio chunk, s after ``sent``
    chunk_samples: list[int] = field(default_factory=list)
    end_offset: float | None = None  # final response (or failure), s after ``sent``
    sample_rate: int = 24000
    error_kind: str | None = None
    error: str | None = None
    flags: list[str] = field(default_factory=list)
    warmup: bool = False
    run_start: float = 0.0  # monotonic time the run started (for time series)
    level: float | None = None  # a sweep's load level this request was sent at (None outside sweeps)
    # The player the continuity metrics imagine: it starts once it holds more than this much audio (--prebuffer).
    prebuffer_s: float = 0.0
    # Where speech starts inside the audio, s from its first sample (a voice-activity detector, cvload.listen.vad);
    # None: not looked for (no --onset) or no speech in the audio looked at.
    speech_start_s: float | None = None
    # Content (cvload.listen.content): the ASR transcript and its word (English) or character (Chinese) error rate
    # against ``text``; None where the request was not checked.
    transcript: str | None = None
    content_error: float | None = None
    language: str | None = None  # the item's language where its input gave it (else from the text's script)
    # --check-content's word on this request (cvload.listen.live.CHECK_OUTCOMES): "checked", "failed" (the
    # recogniser failed), or why a sampled request went on unchecked ("backlog", "budget", "language", "late");
    # None: not part of the sample (or no checks). Per-level and per-run content counters are folded from it.
    content_check: str | None = None
    abandon_offset: float | None = None  # --barge-in: when its listener abandoned it, s after ``sent``

    @property
    def ok(self) -> bool:
        return self.error_kind is None and not self.flags

    @property
    def incomplete(self) -> bool:
        return self.error_kind == ERR_INCOMPLETE

    @property
    def barged_in(self) -> bool:
        return self.error_kind == ERR_BARGED_IN

    @property
    def audio_s(self) -> float:
        return sum(self.chunk_samples) / self.sample_rate if self.sample_rate else 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        names = cls.__dataclass_fields__
        record = cls(**{k: v for k, v in data.items() if k in names})
        if "sent_s" in data and "sent" not in data:
            record.sent = data["sent_s"]
        return record
