"""A real Triton server run locally: the launcher (binary lookup, ports, readiness, stop) and template filling."""
