"""What a run is told. Defaults, scenario files and flags resolved into one `RunConfig` (`config`,
`scenario`, `typed_toml`), what to synthesize (`inputs`), where the server is (`address`) and how to
reach it (`transport`: TLS, headers).
"""
