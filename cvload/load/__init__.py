"""Load generation: what sends the requests and drives a run. The load driver (`driver`) and its three
implementations (`engine` in this process, `process_fleet` on this host, `ray_fleet` on a cluster),
the session and the sweep that drive them, and the load's shapes (barge-in, garbage-collection pauses).
"""
