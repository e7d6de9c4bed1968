//! UDP I/O backends. Knows sockets, buffers and batches; knows no protocol.
