"""The DynamoDB serving store against the moto server on 127.0.0.1 (real HTTP, boto3 with endpoint_url)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from instarec_assets.backends.dynamodb_store import Backoff, send_with_backoff, write_batches
from instarec_assets.backends.serving_store import (
    DynamoDbRecommendationStore,
    Recommendation,
    RecommendationStore,
    ServingStoreError,
)
from instarec_assets.backends.testing import recommendations_table, tag_of
from instarec_assets_tests.aws_fixtures import REGION
from instarec_assets_tests.serving_helpers import read_while_loading

pytestmark = pytest.mark.aws
BATCH = "2025-01-06"


@pytest.fixture
def table_name() -> str:
    return f"instarec-test-recommendations-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(aws_env: str, table_name: str) -> DynamoDbRecommendationStore:
    created = DynamoDbRecommendationStore(table_name, endpoint_url=aws_env, region_name=REGION)
    assert created.ensure_table() is True
    return created


def _client(endpoint: str):
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)


def test_ensure_table_creates_the_stacks_key_schema_once(aws_env: str, store: DynamoDbRecommendationStore):
    assert store.ensure_table() is False
    table = _client(aws_env).describe_table(TableName=store.table_name)["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
        ("user_id", "HASH"),
        ("version", "RANGE"),
    }
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("user_id", "N"),
        ("version", "S"),
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


class FaultProxy:
    """An HTTP proxy in front of the moto server that plays DynamoDB under load.

    `throttle[target]` answers that many of the next requests for an X-Amz-Target (e.g.
    "BatchWriteItem") with ProvisionedThroughputExceededException. `defer_puts` makes that many of
    the next BatchWriteItem calls forward only their first half of PutRequests (`always_defer`:
    none) and answer the rest as UnprocessedItems, as DynamoDB does when a partition is out of
    capacity. Every request is logged as (time, target, put keys).
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.throttle: dict[str, int] = {}
        self.defer_puts = 0
        self.always_defer = False
        self.log: list[tuple[float, str, list[tuple[int, str]]]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def requests(self, target: str) -> list[tuple[float, list[tuple[int, str]]]]:
        return [(at, keys) for at, logged, keys in self.log if logged == target]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                target = self.headers.get("X-Amz-Target", "").split(".")[-1]
                request = json.loads(body) if body else {}
                puts = [
                    entry
                    for entries in request.get("RequestItems", {}).values()
                    for entry in entries
                    if "PutRequest" in entry
                ]
                keys = [
                    (int(p["PutRequest"]["Item"]["user_id"]["N"]), p["PutRequest"]["Item"]["version"]["S"])
                    for p in puts
                ]
                with proxy.lock:
                    proxy.log.append((time.perf_counter(), target, keys))
                    throttled = proxy.throttle.get(target, 0) > 0
                    if throttled:
                        proxy.throttle[target] -= 1
                    defer = (
                        not throttled
                        and target == "BatchWriteItem"
                        and bool(puts)
                        and (proxy.always_defer or proxy.defer_puts > 0)
                    )
                    if defer and not proxy.always_defer:
                        proxy.defer_puts -= 1
                if throttled:
                    self._answer(
                        400,
                        {
                            "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                            "message": "The level of configured provisioned throughput for the table was exceeded.",
                        },
                    )
                    return
                unprocessed: dict[str, list] = {}
                if defer:
                    (table, entries), *_ = request["RequestItems"].items()
                    kept = 0 if proxy.always_defer else (len(entries) + 1) // 2
                    request["RequestItems"][table], unprocessed[table] = entries[:kept], entries[kept:]
                    if not request["RequestItems"][table]:
                        self._answer(200, {"UnprocessedItems": unprocessed})
                        return
                    body = json.dumps(request).encode()
                status, answer = self._forward(body)
                if unprocessed:
                    answer = json.loads(answer)
                    answer["UnprocessedItems"] = unprocessed
                    answer = json.dumps(answer).encode()
                self._answer(status, answer)

            def _forward(self, body: bytes) -> tuple[int, bytes]:
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in {"host", "content-length"}
                }
                forwarded = urllib.request.Request(proxy.upstream + self.path, data=body, headers=headers)
                try:
                    with urllib.request.urlopen(forwarded) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as error:
                    return error.code, error.read()

            def _answer(self, status: int, payload: dict | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(aws_env: str) -> Iterator[FaultProxy]:
    with FaultProxy(aws_env) as running:
        yield running


def _store_behind(proxy: FaultProxy, table_name: str, **kwargs) -> DynamoDbRecommendationStore:
    return DynamoDbRecommendationStore(table_name, endpoint_url=proxy.endpoint, region_name=REGION, **kwargs)


def _same_table(store: DynamoDbRecommendationStore, endpoint: str, **kwargs) -> DynamoDbRecommendationStore:
    return DynamoDbRecommendationStore(store.table_name, endpoint_url=endpoint, region_name=REGION, **kwargs)


def _put(user_id: int) -> dict:
    return {"PutRequest": {"Item": {"user_id": user_id, "version": "v"}}}


def test_send_with_backoff_resends_only_the_unprocessed_items_after_growing_capped_pauses():
    calls: list[list[dict]] = []

    def send(batch: list[dict]) -> list[dict]:
        calls.append(batch)
        return batch[1:] if len(calls) <= 4 else []  # DynamoDB takes one item per call, four times

    pauses: list[float] = []
    batch = [_put(user) for user in range(1, 7)]
    attempts = send_with_backoff(
        send,
        batch,
        table_name="t",
        backoff=Backoff(max_attempts=6, base_s=0.1, cap_s=0.4),
        sleep=pauses.append,
        jitter=lambda: 0.5,
    )

    assert attempts == 5
    assert calls == [batch, batch[1:], batch[2:], batch[3:], batch[4:]]
    # step = min(cap, base * 2^(retry-1)): 0.1, 0.2, 0.4, 0.4; pause = step/2 + step/2 * jitter
    assert pauses == pytest.approx([0.075, 0.15, 0.3, 0.3])


def test_send_with_backoff_gives_up_in_one_line_naming_the_table_and_the_items_left():
    calls: list[int] = []
    pauses: list[float] = []

    def send(batch: list[dict]) -> list[dict]:
        calls.append(len(batch))
        return batch[2:]

    with pytest.raises(ServingStoreError) as raised:
        send_with_backoff(
            send,
            [_put(user) for user in range(1, 26)],
            table_name="recs",
            backoff=Backoff(max_attempts=3, base_s=1.0, cap_s=1.5),
            sleep=pauses.append,
            jitter=lambda: 0.0,
        )
    assert calls == [25, 23, 21]
    assert pauses == [0.5, 0.75]
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("DynamoDB table recs: 19 of 25 items still unprocessed after 3 BatchWriteItem")


def test_send_with_backoff_makes_one_call_and_no_pause_when_everything_is_processed():
    pauses: list[float] = []
    assert (
        send_with_backoff(lambda batch: [], [_put(1)], table_name="t", backoff=Backoff(), sleep=pauses.append)
        == 1
    )
    assert pauses == []


def test_write_batches_hold_at_most_25_requests_with_each_key_once_the_latest_winning():
    requests = [("put", {"user_id": user, "version": "v", "tag": 1}) for user in range(1, 31)]
    requests.insert(3, ("put", {"user_id": 2, "version": "v", "tag": 9}))  # after user 2's first put
    requests.append(("delete", {"user_id": 27, "version": "v"}))
    requests.append(("put", {"user_id": 27, "version": "w", "tag": 2}))

    batches = list(write_batches(requests))

    assert [len(batch) for batch in batches] == [25, 6]
    first = {
        entry["PutRequest"]["Item"]["user_id"]: entry["PutRequest"]["Item"]["tag"] for entry in batches[0]
    }
    assert first == {**{user: 1 for user in range(1, 26)}, 2: 9}  # user 2's later put replaced the first
    assert {"DeleteRequest": {"Key": {"user_id": 27, "version": "v"}}} in batches[1]
    assert {"PutRequest": {"Item": {"user_id": 27, "version": "v", "tag": 1}}} not in batches[1]
    assert {"PutRequest": {"Item": {"user_id": 27, "version": "w", "tag": 2}}} in batches[1]


def test_a_throttled_load_with_unprocessed_items_backs_off_and_writes_every_item(
    proxy: FaultProxy, store: DynamoDbRecommendationStore
):
    """Through real HTTP: botocore retries the throttling errors, the store re-sends the unprocessed
    items after a pause, and the load ends with every user's list stored once."""
    behind = _store_behind(proxy, store.table_name, writers=1, write_backoff=Backoff(base_s=0.2, cap_s=0.4))
    proxy.throttle["BatchWriteItem"] = 1
    proxy.defer_puts = 3

    report = behind.load(recommendations_table(range(1, 61), tag=1), "model-1", batch=BATCH)

    assert (report.users, report.rows) == (60, 600)
    assert store.stored_versions() == {report.version: 60}
    assert all(store.top_k(user, 10).items[-1].rank == 10 for user in (1, 25, 26, 60))
    writes = proxy.requests("BatchWriteItem")
    assert [len(keys) for _, keys in writes] == [25, 25, 12, 6, 3, 25, 10]
    assert writes[0][1] == writes[1][1]  # the throttled send was repeated in full
    for (sent_at, keys), (resent_at, resent) in itertools.pairwise(writes[1:5]):
        assert resent == keys[len(keys) - len(resent) :]  # the deferred second half, nothing else
        assert resent_at - sent_at >= 0.1  # the backoff's first step is 0.2 s, at least half of it waited


def test_a_load_whose_items_never_drain_fails_in_one_line_and_keeps_the_current_version(
    proxy: FaultProxy, store: DynamoDbRecommendationStore
):
    first = store.load(recommendations_table(range(1, 11), tag=1), "model-1", batch=BATCH)
    behind = _store_behind(
        proxy, store.table_name, writers=1, write_backoff=Backoff(max_attempts=3, base_s=0.01, cap_s=0.02)
    )
    proxy.always_defer = True

    with pytest.raises(ServingStoreError, match=f"DynamoDB table {store.table_name}: 25 of 25 items still"):
        behind.load(recommendations_table(range(1, 41), tag=2), "model-2", batch=BATCH)

    # three tries of the first batch, then the failed load's best-effort cleanup (two batches of deletes)
    assert [len(keys) for _, keys in proxy.requests("BatchWriteItem")] == [25, 25, 25, 0, 0]
    assert store.current_version() == first.version
    assert store.stored_versions() == {first.version: 10}


def test_reads_fail_fast_when_throttled(proxy: FaultProxy, store: DynamoDbRecommendationStore):
    """Reads on the request path give up after 3 retries (writes are allowed 10, adaptively)."""
    store.load(recommendations_table(range(1, 3), tag=1), "model-1", batch=BATCH)
    reader = _store_behind(proxy, store.table_name)
    proxy.throttle["GetItem"] = 100

    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        reader.top_k(1, 10)

    assert len(proxy.requests("GetItem")) == 4
    assert reader._write_client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}


def test_load_then_top_k_returns_exact_items_by_rank(aws_env: str, store: DynamoDbRecommendationStore):
    assert isinstance(store, RecommendationStore)
    assert store.current_version() is None
    assert store.top_k(7, 10) is None
    rows = pa.table(
        {
            "user_id": [7, 7, 9, 7],
            "rank": [2, 1, 1, 3],
            "product_id": [13176, 24852, 21137, 47209],
            "product_name": [
                "Bag of Organic Bananas",
                "Banana",
                "Organic Strawberries",
                "Hass Avocado · Größe L",
            ],
            "aisle": ["fresh fruits"] * 4,
            "department": ["produce"] * 4,
            "probability": [0.612345678901234, 0.7310585786300049, 0.25, 0.1],
            "explore": [False, False, False, True],
        }
    )

    report = store.load(rows, "xgb-2025-01-06", batch=BATCH)

    assert (report.users, report.rows, report.previous_version) == (2, 4, None)
    assert store.current_version() == report.version
    result = store.top_k(7, 10)
    assert (result.user_id, result.model_version, result.version) == (7, "xgb-2025-01-06", report.version)
    assert result.items == (
        Recommendation(1, 24852, "Banana", "fresh fruits", "produce", 0.7310585786300049, False),
        Recommendation(
            2, 13176, "Bag of Organic Bananas", "fresh fruits", "produce", 0.612345678901234, False
        ),
        Recommendation(3, 47209, "Hass Avocado · Größe L", "fresh fruits", "produce", 0.1, True, "explore"),
    )
    assert [item.rank for item in store.top_k(7, 2).items] == [1, 2]
    assert store.top_k(8, 10) is None
    assert store.top_k(0, 10) is None  # the pointer item is not a user

    client = _client(aws_env)
    pointer = client.get_item(
        TableName=store.table_name,
        Key={"user_id": {"N": "0"}, "version": {"S": "CURRENT"}},
        ConsistentRead=True,
    )["Item"]
    assert pointer["current_version"] == {"S": report.version}
    assert pointer["model_version"] == {"S": "xgb-2025-01-06"}
    item = client.get_item(
        TableName=store.table_name, Key={"user_id": {"N": "9"}, "version": {"S": report.version}}
    )["Item"]
    assert json.loads(item["recommendations"]["S"]) == [
        {
            "rank": 1,
            "product_id": 21137,
            "product_name": "Organic Strawberries",
            "aisle": "fresh fruits",
            "department": "produce",
            "probability": 0.25,
            "explore": False,
            "source": "model",
        }
    ]


def test_second_load_switches_and_removes_every_item_of_the_old_version(
    aws_env: str, store: DynamoDbRecommendationStore
):
    store = _same_table(store, aws_env, keep_versions=1)
    first = store.load(recommendations_table(range(1, 51), tag=1), "model-1", batch=BATCH)
    second = store.load(recommendations_table(range(21, 81), tag=2), "model-2", batch=BATCH)

    assert second.previous_version == first.version
    assert second.removed_versions == (first.version,)
    assert second.removed_items == 50
    assert store.stored_versions() == {second.version: 60}  # no item of the old version remains
    old_items = _client(aws_env).scan(
        TableName=store.table_name,
        FilterExpression="#v = :old",
        ExpressionAttributeNames={"#v": "version"},
        ExpressionAttributeValues={":old": {"S": first.version}},
    )["Items"]
    assert old_items == []
    assert store.top_k(10, 10) is None
    assert {tag_of(item.product_id) for item in store.top_k(30, 10).items} == {2}
    other_reader = DynamoDbRecommendationStore(store.table_name, endpoint_url=aws_env, region_name=REGION)
    assert other_reader.top_k(30, 3).model_version == "model-2"
    assert [record.version for record in store.versions()] == [second.version]


def test_readers_never_see_a_half_loaded_version(aws_env: str, store: DynamoDbRecommendationStore):
    """While a larger load runs, readers get complete old or complete new lists, never a missing user.

    One reader reads the pointer on every request; the other caches it for 60 s, so it keeps asking
    for the old version after the switch, meets the deleted items and can only reach the new version
    through the miss -> re-read pointer path.
    """
    old_users = range(1, 301)
    store = _same_table(store, aws_env, keep_versions=1)
    store.load(recommendations_table(old_users, tag=1), "model-1", batch=BATCH)
    readers = [
        DynamoDbRecommendationStore(
            store.table_name, endpoint_url=aws_env, region_name=REGION, pointer_ttl_s=0
        ),
        DynamoDbRecommendationStore(
            store.table_name, endpoint_url=aws_env, region_name=REGION, pointer_ttl_s=60
        ),
    ]
    report, watch = read_while_loading(
        readers,
        old_users,
        lambda: store.load(recommendations_table(range(1, 1201), tag=2), "model-2", batch=BATCH),
        start_after_s=0.1,
        until=lambda seen: bool(seen[1]) and seen[1][-1][1] == 2,  # the caching reader moved on
        end_after_s=0.2,
    )

    assert report.removed_items == 300
    watch.assert_old_then_new_only()
    assert store.stored_versions() == {report.version: 1200}


def test_a_concurrent_switch_makes_the_later_load_fail_and_clean_up(
    aws_env: str, store: DynamoDbRecommendationStore
):
    """Load A is overtaken by load B mid-way: A's conditional pointer write fails; B stays current."""
    first = store.load(recommendations_table(range(1, 11), tag=1), "model-1", batch=BATCH)
    other = DynamoDbRecommendationStore(store.table_name, endpoint_url=aws_env, region_name=REGION)
    overtaking = {}

    def batches_of_a():
        yield recommendations_table(range(1, 600), tag=2)
        overtaking["report"] = other.load(recommendations_table(range(1, 21), tag=3), "model-3", batch=BATCH)
        yield recommendations_table(range(600, 1200), tag=2)

    with pytest.raises(ServingStoreError, match="another load switched"):
        store.load(batches_of_a(), "model-2", batch=BATCH)

    winner = overtaking["report"]
    assert winner.previous_version == first.version
    assert store.current_version() == winner.version
    # A's items were removed; B's are intact, and the first version is retained
    assert store.stored_versions() == {first.version: 10, winner.version: 20}
    assert [record.version for record in store.versions()] == [winner.version, first.version]
    assert store.top_k(5, 10).model_version == "model-3"


def test_a_load_failing_mid_way_discards_its_items(store: DynamoDbRecommendationStore):
    first = store.load(recommendations_table(range(1, 11), tag=1), "model-1", batch=BATCH)

    def batches():
        yield recommendations_table(range(1, 700), tag=2)
        yield recommendations_table(range(5, 8), tag=2).drop_columns(["aisle"])

    with pytest.raises(ServingStoreError, match="missing column"):
        store.load(batches(), "model-2", batch=BATCH)
    assert store.current_version() == first.version
    assert store.stored_versions() == {first.version: 10}
    with pytest.raises(ServingStoreError, match="no recommendations"):
        store.load(recommendations_table([], tag=2), "model-2", batch=BATCH)


@pytest.mark.slow
def test_ten_thousand_users_load(store: DynamoDbRecommendationStore):
    """10k users in 400 BatchWriteItem calls; the bound is generous because moto, not DynamoDB, is timed."""
    report = store.load(recommendations_table(range(1, 10001), tag=1), "model-1", batch=BATCH)
    assert (report.users, report.rows) == (10000, 100000)
    assert report.extra["max_item_bytes"] < 4096  # half a read unit per eventually consistent GetItem
    assert report.write_seconds < 60, report.as_metadata()
    assert store.top_k(9999, 10).items[-1].rank == 10


# ---------------------------------------------------------------- batches, retention and rollback
def _load(store: DynamoDbRecommendationStore, tag: int, batch: str, **kwargs):
    return store.load(recommendations_table(range(1, 6), tag=tag), f"model-{tag}", batch=batch, **kwargs)


def test_newer_and_same_batches_load_and_the_registry_records_them(
    aws_env: str, store: DynamoDbRecommendationStore
):
    assert store.versions() == []
    first = _load(store, 1, "2024-01-01")
    rerun = _load(store, 2, "2024-01-01")
    newer = _load(store, 3, "2024-01-15")

    assert newer.batch == "2024-01-15"
    assert [(r.version, r.batch, r.model_version, r.users, r.items, r.active) for r in store.versions()] == [
        (newer.version, "2024-01-15", "model-3", 5, 50, True),
        (rerun.version, "2024-01-01", "model-2", 5, 50, False),
        (first.version, "2024-01-01", "model-1", 5, 50, False),
    ]
    assert store.current_info()["batch"] == "2024-01-15"
    pointer = _client(aws_env).get_item(
        TableName=store.table_name,
        Key={"user_id": {"N": "0"}, "version": {"S": "CURRENT"}},
        ConsistentRead=True,
    )["Item"]
    assert (pointer["current_version"]["S"], pointer["batch"]["S"]) == (newer.version, "2024-01-15")
    assert store.top_k(0, 10) is None  # the registry items are not users either


def test_an_older_batch_is_refused_in_one_line_and_the_active_version_stays(
    store: DynamoDbRecommendationStore,
):
    active = _load(store, 1, "2024-01-15")

    with pytest.raises(ServingStoreError) as raised:
        _load(store, 2, "2024-01-01")

    assert str(raised.value) == (
        f"serving store DynamoDB table {store.table_name}: refusing to load recommendations from batch "
        "2024-01-01 over the active version built from batch 2024-01-15 (use allow_older=True / "
        "instarec serving activate to roll back)"
    )
    assert store.current_version() == active.version
    assert store.stored_versions() == {active.version: 5}  # nothing was written
    assert [record.version for record in store.versions()] == [active.version]

    older = _load(store, 2, "2024-01-01", allow_older=True)
    assert store.current_version() == older.version
    assert store.top_k(1, 10).model_version == "model-2"


def test_the_store_keeps_the_newest_versions_and_deletes_the_rest(aws_env: str, table_name: str):
    store = DynamoDbRecommendationStore(table_name, endpoint_url=aws_env, region_name=REGION, keep_versions=2)
    store.ensure_table()
    reports = [_load(store, tag, f"2024-01-0{tag}") for tag in (1, 2, 3, 4)]

    assert [record.version for record in store.versions()] == [reports[3].version, reports[2].version]
    assert store.stored_versions() == {reports[3].version: 5, reports[2].version: 5}
    assert (reports[2].removed_versions, reports[2].removed_items) == ((reports[0].version,), 5)
    assert reports[3].removed_versions == (reports[1].version,)
    with pytest.raises(ValueError, match="keep_versions must be a positive integer"):
        DynamoDbRecommendationStore(table_name, keep_versions=0)


def test_activate_switches_readers_to_a_retained_version_and_refuses_unknown_ones(
    aws_env: str, store: DynamoDbRecommendationStore
):
    reports = [_load(store, tag, f"2024-01-0{tag}") for tag in (1, 2, 3, 4)]  # keeps 2, 3, 4
    reader = _same_table(store, aws_env, pointer_ttl_s=0)
    assert reader.top_k(1, 10).model_version == "model-4"

    record = store.activate(reports[1].version)

    assert (record.version, record.batch, record.active) == (reports[1].version, "2024-01-02", True)
    assert store.current_version() == reports[1].version
    assert reader.top_k(1, 10).model_version == "model-2"
    assert store.top_k(1, 10).model_version == "model-2"  # the activating store's own cache moved too
    assert [r.active for r in store.versions()] == [False, False, True]
    for unknown in (reports[0].version, "no-such-version", "CURRENT"):
        with pytest.raises(ServingStoreError) as raised:
            store.activate(unknown)
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(
            f"serving store DynamoDB table {store.table_name}: version {unknown!r} is not a retained"
        )
    assert store.current_version() == reports[1].version

    # a load after the rollback compares with the active version's batch; the rolled-back-to version
    # is one of the newest 3 loaded only if it is recent enough, and the active one is never removed
    with pytest.raises(ServingStoreError, match="refusing to load recommendations from batch 2024-01-01"):
        _load(store, 5, "2024-01-01")
    newer = _load(store, 5, "2024-01-03")
    assert [r.version for r in store.versions()] == [newer.version, reports[3].version, reports[2].version]
    assert set(store.stored_versions()) == {newer.version, reports[3].version, reports[2].version}
    assert reader.top_k(1, 10).model_version == "model-5"


def test_a_table_switched_before_the_registry_lists_its_active_version_from_the_pointer(
    aws_env: str, store: DynamoDbRecommendationStore
):
    old = _load(store, 1, "2024-01-15")
    client = _client(aws_env)
    client.delete_item(TableName=store.table_name, Key={"user_id": {"N": "0"}, "version": {"S": old.version}})
    client.update_item(
        TableName=store.table_name,
        Key={"user_id": {"N": "0"}, "version": {"S": "CURRENT"}},
        UpdateExpression="REMOVE #b",
        ExpressionAttributeNames={"#b": "batch"},
    )
    assert [(r.version, r.batch, r.active) for r in store.versions()] == [(old.version, None, True)]

    report = _load(store, 2, "2024-01-01")  # no batch on the pointer: nothing to compare with
    assert store.current_version() == report.version
    assert [r.version for r in store.versions()] == [report.version]  # the unregistered one was removed
    assert store.stored_versions() == {report.version: 5}
