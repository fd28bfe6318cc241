"""Admission control, rate limits and backpressure (see the admission issue)."""
