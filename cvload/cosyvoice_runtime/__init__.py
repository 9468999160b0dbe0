"""The wire protocol of CosyVoice's Python runtime (gRPC service ``cosyvoice.CosyVoice``), shared by the cvload
target that measures such a server and the emulator that pretends to be one.

``cosyvoice_pb2.py``, its type stub ``cosyvoice_pb2.pyi`` (what mypy reads of the messages) and
``cosyvoice_pb2_grpc.py`` are generated from ``cosyvoice.proto`` and committed, so installing cvload needs no code
generator. After editing the proto, regenerate them from the repository root with grpcio-tools (the ``dev``
extra)::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. cvload/cosyvoice_runtime/cosyvoice.proto

The proto's path inside the repository makes the generated modules import each other through this package
(``from cvload.cosyvoice_runtime import cosyvoice_pb2``) and register the file under that path, so they never
collide with another ``cosyvoice_pb2`` on ``sys.path``.
"""
