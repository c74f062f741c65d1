"""Prefix-cache-aware request routing: a pure index and policy, and the Ray Serve router around them."""
