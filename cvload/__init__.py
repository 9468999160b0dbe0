"""cvload: load tests and live latency views for CosyVoice text-to-speech servers."""

import os

__version__ = "0.1.0"

# No cvload process does linear algebra (the recognisers run in onnxruntime, with threads of their own), yet numpy's
# OpenBLAS starts a thread per core at import, each with its buffer: about 0.1 s of CPU per process here and more on
# a many-core GPU host, paid by every helper process and by each of the emulator's Python-backend stubs (they inherit
# this environment). Set before numpy is imported anywhere in cvload; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
