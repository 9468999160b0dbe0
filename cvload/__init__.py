"""cvload: load tests and live latency views for CosyVoice text-to-speech servers."""

__version__ = "0.1.0"
