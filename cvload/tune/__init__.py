"""``cvload tune``: which deployment configuration holds the most streams within the objectives.

A search space file (``space.py``) names the deployment's knobs, their values, costs and constraints; a
deployment (``deployments.py``: the embedded pipeline emulator here, ``cvload bootstrap``'s through a registered
factory) turns a candidate's knobs into a serving server, restarting only what must restart; each candidate's
capacity is measured with ``cvload sweep``'s bisect (``runner.py``), searched exhaustively or with Optuna's TPE
(``search.py``); ``tune.json`` (schema ``cvload.tune/1``, docs/tune.md) holds every candidate.
"""
