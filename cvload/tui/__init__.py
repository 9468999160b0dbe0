"""``cvload tui``: the live latency dashboard (Textual) over the shared engine, and replays of finished runs."""
