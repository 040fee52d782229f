"""The olol node agent: runs on each inference host in front of its Ollama."""
