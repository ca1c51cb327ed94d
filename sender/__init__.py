"""Sender service: scans guest memory for zero pages and streams the rest to a receiver."""
