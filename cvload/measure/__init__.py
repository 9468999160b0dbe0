"""What the numbers mean. Every metric defined once (`metrics`), objectives judged on them (`slo`),
the live window the dashboard reads, and checks on the measurement itself: the measuring process's
loop health, each response's audio, what a barge-in run measured.
"""
