"""The bundled tiktoken encodings (cl100k_base, o200k_base), read by llmsim.engine.tokens."""
