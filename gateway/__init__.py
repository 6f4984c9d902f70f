"""The HTTP gateway: the only HTTP door into the mesh (see docs/API.md)."""
