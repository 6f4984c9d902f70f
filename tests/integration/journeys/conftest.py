"""The journeys service over real gRPC with a real Redis and its own database, beside small real
servers for the messaging and crm_sync contracts (fakes.py): the `mesh` the service tests drive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from nurture import redisconn
from nurture.api.common.v1 import common_pb2_grpc
from nurture.api.journeys.v1 import journeys_pb2_grpc
from nurture.bus import Publisher
from nurture.clock import VirtualClock
from nurture.rpc import ServiceServer
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.journeys.fakes import Recorder, start_fakes


@dataclass
class Mesh:
    running: Running
    rec: Recorder
    messaging: ServiceServer
    crm: ServiceServer
    stub: journeys_pb2_grpc.JourneysStub
    admin: common_pb2_grpc.AdminStub
    pub: Publisher
    clock: VirtualClock
    settings: Settings


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    rec = Recorder()
    # The fakes bind port 0 and say which port they got: a port picked free and bound later can be
    # taken in between by another test process.
    messaging, crm = await start_fakes(rec)
    mport, cport = messaging.port, crm.port
    # scoring is only called by update steps; a free port keeps tests off a running local mesh.
    settings = settings.with_overrides(messaging_addr=f"127.0.0.1:{mport}", crm_sync_addr=f"127.0.0.1:{cport}",
                                       scoring_addr=f"127.0.0.1:{free_port()}")
    running = await start_service("journeys", settings)
    channel = mesh_channel(running.address)
    client = redisconn.connect(settings)
    clock = VirtualClock(redisconn.connect_sync(settings))  # the cluster's too, where the settings name one
    yield Mesh(running, rec, messaging, crm, journeys_pb2_grpc.JourneysStub(channel),
               common_pb2_grpc.AdminStub(channel), Publisher(client, settings.bus_shards), clock, settings)
    await channel.close()
    await running.stop(grace=0.2)
    await messaging.stop(0)
    await crm.stop(0)
    await client.aclose()


