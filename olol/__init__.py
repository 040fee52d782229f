"""olol: one Ollama-compatible endpoint in front of a fleet of Ollama hosts."""

__version__ = "0.1.0"
