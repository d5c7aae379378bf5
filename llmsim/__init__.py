"""llmsim: load-test applications built on LLM APIs."""

__version__ = "0.1.0"
