"""latency package."""
