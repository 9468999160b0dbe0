"""Benchmarks: the lean reference client and the emulator's calibration against published figures."""
