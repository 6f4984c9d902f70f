"""The web console served by the gateway under /console/ (docs/API.md, "Console")."""
