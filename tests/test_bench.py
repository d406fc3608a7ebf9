"""`make bench`'s own helpers, where a silent change in the service would skew its figures."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from redis import Redis

from service import delivery, drain
from service.embedded_redis import EmbeddedRedis

from .conftest import BULK_BODY, post, work
from .processes import REPO


def _bench_run() -> ModuleType:
    """bench/run.py, under a name of its own, with its folder on the path while it loads (it
    imports its neighbour `common` as `make bench` runs it)."""
    folder = str(REPO / "bench")
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def test_fill_records_deliveries_as_the_web_does(
    redis_server: EmbeddedRedis, conn: Redis, client
) -> None:
    """The growth figures are for deliveries that `fill` left waiting: they must be what a
    verified callback leaves (the same record), and a worker must process them."""
    assert post(client, "bulk", BULK_BODY).status_code == 202
    (from_web,) = conn.lrange(drain.READY_KEY, 0, -1)

    _bench_run().fill(redis_server, 25)

    ids = [value.decode() for value in conn.lrange(drain.READY_KEY, 0, -1)]
    assert len(ids) == len(set(ids)) == 25
    assert conn.zcard(delivery.PENDING_KEY) == 25
    web_fields = set(conn.hkeys(delivery.record_key(from_web.decode())))
    for filled in ids[1:]:
        record = conn.hgetall(delivery.record_key(filled))
        assert set(record) == web_fields
        assert record[b"state"] == b"queued" and record[b"kind"] == b"bulk"

    work(conn)
    assert conn.zcard(delivery.PENDING_KEY) == 0
    states = {conn.hget(delivery.record_key(each), "state") for each in ids}
    assert states == {b"done"}


def test_summary_has_a_ratio_for_every_other_target() -> None:
    """Each ratio is the median of the per-round ratios, for the waiting peer as for the
    issue's peer and the floor."""

    def rounds(*rates: float) -> list[dict]:
        return [{"accepted_per_s": rate, "p50_ms": 1.0, "p99_ms": 2.0} for rate in rates]

    summary = _bench_run()._summarise({"bulk c8": {
        "bulkhook": rounds(100, 200, 300),
        "webhook": rounds(200, 200, 200),
        "webhook-waits": rounds(50, 400, 100),
        "floor": rounds(10, 100, 300),
    }})["bulk c8"]  # fmt: skip

    assert summary["ratio_webhook"] == 1.0  # 0.5, 1.0, 1.5
    assert summary["ratio_webhook-waits"] == 2.0  # 2.0, 0.5, 3.0
    assert summary["ratio_floor"] == 2.0  # 10.0, 2.0, 1.0
    assert summary["bulkhook"]["accepted_per_s"] == 200
