"""Text generation: the KV-cache decoder, `llmjax.load` and `pipeline`, and the OpenAI server."""
