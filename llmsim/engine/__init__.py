"""The API-independent simulator: replies and when their tokens are due, the stream loop that
writes them, engine mode's batching replicas, and the statistics and limits the worker processes
share.
"""
