"""``cvload report``: one self-contained HTML file (and its Markdown twin) from results folders of runs or
sweeps. A view of finished results: it reads results folders (cvload.results.folder) and the metric definitions,
never the engine. ``build.write_report`` is the entry; docs/report.md describes what a report holds."""
