"""A new `bytes` object written in place before anyone else sees it.

gRPC's Python API sends `bytes` and copies them once into its own buffer. A frame
built as a bytearray or from parts costs one more copy of every page to become
`bytes` (b"".join), 12 % of a connection process's CPU. So a connection process
asks CPython for an uninitialised bytes object of the frame's size
(PyBytes_FromStringAndSize(NULL, n), the C API's way of building a bytes object
in place), reads guest memory straight into it and writes the rest of the frame
around the pages. That is sound only while the object is new: nothing may hash,
compare or share it until it is filled, and nothing may write to it after. So
the object is reachable only through finish(), which releases the writable view
first; slices of the view (and numpy arrays over them) are the caller's to drop
before then, as Python cannot enforce it.

Every byte must be written before finish(): an uninitialised byte would send
whatever the allocator held before. Callers fill it completely or drop it.
"""

from __future__ import annotations

import ctypes

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object  # ctypes takes over the new reference
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.argtypes = [ctypes.py_object]
_bytes_address.restype = ctypes.c_void_p


class WritableBytes:
    """An uninitialised bytes object of `size` bytes and a writable view of it."""

    __slots__ = ("_object", "_view")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self._object: bytes | None = _new_bytes(None, size)
        storage = (ctypes.c_char * size).from_address(_bytes_address(self._object))
        self._view: memoryview | None = memoryview(storage).cast("B")

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("already finished")
        return self._view

    def finish(self) -> bytes:
        """The object, now filled; the writable view is released first."""
        if self._view is None or self._object is None:
            raise ValueError("already finished")
        self._view.release()
        self._view = None
        filled, self._object = self._object, None
        return filled

    def discard(self) -> None:
        """Drop it unfinished (its contents never leave this process); nothing once finished."""
        if self._view is not None:
            self._view.release()
        self._view = None
        self._object = None
