"""Locust users and metrics for LLM APIs (import `llmsim.locust` to use them)."""
