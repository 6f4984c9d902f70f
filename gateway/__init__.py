"""The HTTP gateway: the only HTTP door into the mesh (see ../shared/API.md)."""
