"""The front door's protocol layer: request validation, Ollama/OpenAI errors and
translation, model names and stream framing. Pure functions, no framework."""
