"""Vocabulary shared by sender and receiver: ranges, zero pages, guest memory, framing, digest.

Nothing here imports livemig.sender or livemig.receiver.
"""
