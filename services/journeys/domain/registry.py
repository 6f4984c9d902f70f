"""The journey versions a process knows, and which version of each is published."""

from __future__ import annotations

from services.journeys.domain.definitions import Journey


class Registry:
    """Journeys by (key, version); `published()` lists the live versions, highest priority first."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, int], Journey] = {}
        self._live: dict[str, int] = {}
        self._sorted: list[Journey] | None = None

    def add(self, journey: Journey) -> None:
        self._by[(journey.key, journey.version)] = journey

    def publish(self, key: str, version: int) -> None:
        if (key, version) not in self._by:
            raise KeyError(f"{key} v{version}")
        self._live[key] = version
        self._sorted = None

    def unpublish(self, key: str) -> None:
        """No version of the journey is live any more (archived): it enters no one."""
        if self._live.pop(key, None) is not None:
            self._sorted = None

    def resolve(self, key: str, version: int) -> Journey | None:
        return self._by.get((key, version))

    def live(self, key: str) -> Journey | None:
        version = self._live.get(key)
        return self._by.get((key, version)) if version is not None else None

    def published(self) -> list[Journey]:
        if self._sorted is None:
            self._sorted = sorted((self._by[(k, v)] for k, v in self._live.items()), key=lambda j: (-j.priority, j.key))
        return self._sorted

    def published_map(self) -> dict[str, Journey]:
        return {j.key: j for j in self.published()}

    def versions(self, key: str) -> list[int]:
        return sorted(v for k, v in self._by if k == key)
