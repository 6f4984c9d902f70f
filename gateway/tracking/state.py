"""What the tracking routes share for the gateway's lifetime, built once with the app (so a bad
`NURTURE_SITE_KEYS` fails the start, naming every problem)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.deps import Mesh
from gateway.tracking.collector import VisitCollector
from gateway.tracking.keys import SiteKey, site_keys
from gateway.tracking.ratelimit import RateLimits
from nurture import redisconn
from nurture.settings import Settings


@dataclass
class Tracking:
    keys: dict[str, SiteKey]
    limits: RateLimits
    collector: VisitCollector

    @classmethod
    def create(cls, settings: Settings, mesh: Mesh) -> Tracking:
        limits = RateLimits(redisconn.connect(settings), settings.bus_shards, settings.redis_wait_replicas)
        return cls(site_keys(settings), limits, VisitCollector(limits))
