"""The web console under /console/ (gateway.console): included here like every other area."""

from gateway.console.pages import router

__all__ = ["router"]
