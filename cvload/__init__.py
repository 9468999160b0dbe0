"""cvload: load tests and live latency views for CosyVoice text-to-speech servers."""

import os

__version__ = "0.1.0"

# No cvload process does linear algebra (the recognisers run in onnxruntime, with threads of their own), yet numpy's
# OpenBLAS starts a thread per core at import, each with its buffer: about 0.1 s of CPU per process here and more on
# a many-core GPU host, paid by every helper process and by each of the emulator's Python-backend stubs (they inherit
# this environment). Set before numpy is imported anywhere in cvload; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# gRPC's fork support (on by default in grpcio) restarts its pollers in a forked child, and Python's subprocess
# forks (rather than vfork) where it runs code before exec, as die_with_parent does: the child then closes every
# descriptor, the poller's included, and aborts (SIGABRT, "epoll_wait error: Bad file descriptor") before exec, so a
# server started from a process with gRPC calls in flight died about one start in forty. No cvload child uses gRPC
# without exec'ing first. Set before grpc is imported anywhere in cvload; a value the user set is kept.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
