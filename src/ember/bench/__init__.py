"""Measuring Ember and its peers: engine throughput, llama.cpp beside it, and load on a server.

This package sits above the layers it measures (it imports `engine/` and speaks HTTP to any
OpenAI-compatible server); nothing below imports it.
"""
