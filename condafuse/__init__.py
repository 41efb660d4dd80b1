"""condafuse: conda environments kept in zip archives and mounted with zipfuse."""

__version__ = "0.1.0"
