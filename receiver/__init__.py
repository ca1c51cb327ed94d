"""Receiver service: creates zero-initialised destination memory and writes page batches into it."""
