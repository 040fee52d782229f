"""The front door: the Flask app that speaks Ollama's API, OpenAI's, jobs and admin."""

from olol.server.app import create_app

__all__ = ["create_app"]
