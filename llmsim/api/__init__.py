"""The simulated APIs' wire formats: each parses a request into an EngineRequest, renders the
engine's Reply as its provider's JSON or stream events, and shapes errors as the provider does.

OpenAI (chat, completions, embeddings, responses, models), Azure OpenAI, Anthropic Messages,
Gemini and vLLM's extra endpoints; llmsim.api.wire says what every format provides.
"""
