"""Sandboxes: the namespaces and mounts a worker lives in, the same at launch and at restore."""
