"""`NURTURE_REDIS_CLUSTER`: read as a flag (1/0, true/false), anything else refused with its name; a
cluster URL naming a database other than 0 refused at start; handed to child processes and read back
the same; and the local cluster's slot ranges cover the 16384 slots once each."""

from __future__ import annotations

import pytest

from cli.main import main
from cli.rediscluster import SLOTS, slot_ranges
from nurture.settings import SettingsError, load_settings, to_environ


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False),
                                               ("false", False), ("", False)])
def test_the_flag_reads_as_a_boolean(raw: str, expected: bool) -> None:
    assert load_settings(environ={"NURTURE_REDIS_CLUSTER": raw}).redis_cluster is expected


@pytest.mark.parametrize("raw", ["2", "maybe", "y e s"])
def test_anything_else_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(SettingsError, match="NURTURE_REDIS_CLUSTER"):
        load_settings(environ={"NURTURE_REDIS_CLUSTER": raw})


def test_a_cluster_has_database_0_only() -> None:
    with pytest.raises(SettingsError, match="database 0 only"):
        load_settings(environ={"NURTURE_REDIS_CLUSTER": "1", "NURTURE_REDIS_URL": "redis://127.0.0.1:7000/3"})
    assert load_settings(environ={"NURTURE_REDIS_CLUSTER": "1",
                                  "NURTURE_REDIS_URL": "redis://127.0.0.1:7000/0"}).redis_cluster
    assert load_settings(environ={"NURTURE_REDIS_URL": "redis://127.0.0.1:7000/3"}).redis_cluster is False


def test_child_processes_read_back_what_up_hands_them() -> None:
    for flag in (True, False):
        settings = load_settings(environ={}, redis_cluster=flag)
        assert load_settings(environ=to_environ(settings)).redis_cluster is flag


@pytest.mark.parametrize("masters", [1, 2, 3, 5, 64])
def test_slot_ranges_cover_every_slot_once(masters: int) -> None:
    ranges = slot_ranges(masters)
    assert len(ranges) == masters and ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert [first for first, _ in ranges[1:]] == [last + 1 for _, last in ranges[:-1]]
    sizes = [last - first + 1 for first, last in ranges]
    assert sum(sizes) == SLOTS and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        slot_ranges(0)


@pytest.mark.parametrize("bad", ["0", "65", "three", "-1"])
def test_up_refuses_a_cluster_size_it_cannot_start(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["up", "--redis-cluster", bad])
    assert exit_.value.code == 2 and "--redis-cluster" in capsys.readouterr().err
