"""What a run leaves behind and how it is read back. The record of one request (`records`), the
results folder written as requests finish (`writer`, `columns_file`) and opened again (`folder`), the
live numbers for Prometheus (`exporter`) and the comparison of finished runs (`compare`).
"""
