"""The AWS serving store: the DynamoDB recommendations table (`infra/stacks/serving.yaml`).

Key schema (what the CloudFormation stack creates, and `ensure_table()` for tests and local setup):
partition key `user_id` (N), sort key `version` (S), on-demand billing.

Items:

- one per user and loaded version: `user_id`, `version` (the load's id, `YYYYmmddTHHMMSSffffffZ-xxxxxx`),
  `model_version`, `loaded_at`, and `recommendations`: the user's list as a compact JSON string,
  `[{"rank": 1, "product_id": ..., "product_name": ..., "aisle": ..., "department": ...,
  "probability": ..., "explore": false, "source": "model"}, ...]` by rank (`source`: model, explore or
  popular, the cold-start tier; an item written before it existed reads as explore or model, as its
  `explore` says). A JSON string rather than a DynamoDB list of
  maps: one attribute to decode in the Lambda (no per-field type descriptors, no Decimal), floats
  round-trip exactly (Python writes the shortest repr that reads back to the same double). A full
  list (52 items: top 10, 2 explore, 40 more candidates for filtered answers, or 52 popular items)
  is about 10.4 KB with real Instacart names (at most ~11 KB; `source` adds ~0.9 KB), so an
  eventually consistent read costs 1.5 read units
  (a 12-item list, ~2.3 KB, cost 0.5), far below DynamoDB's 400 KB item limit
  (`LoadReport.extra["max_item_bytes"]`; measured in bench/RESULTS.md);
- one per product and loaded version when the load was given similar items: `user_id` = minus the
  product id (a partition of its own: real user ids start at 1, the pointer is 0), `version`,
  `loaded_at`, and `similar`: the product's similar items as a compact JSON string
  `[{"rank": 1, "product_id": ..., "product_name": ..., "aisle": ..., "department": ..., "score": ...}]`
  (20 items, about 3 KB). Written before the switch with the users' items, so the pointer
  activates both, and removed by the same cleanup;
- the pointer: `user_id = 0`, `version = "CURRENT"`, with `current_version`, `batch`,
  `model_version`, `previous_version`, `switched_at`, `users`, `rows`, `kind`, `base_version`,
  `chain` (a list: the version and its bases, newest first, down to a full version) and
  `similar_version` (the newest version of the chain loaded with similar items, "" none). Real
  user ids start at 1;
- the version registry: `user_id = 0`, `version = <a retained version's id>`, with `batch` (the
  landing partition it was built from), `model_version`, `loaded_at`, `users`, `rows` (what the
  version itself holds; `forget_user` lowers them), `kind` (full or delta), a delta's
  `base_version`, and `similar` (loaded with similar items). One Query of partition 0 lists the
  retained versions (`versions()`) without scanning the table.

A load writes every item of the new version with BatchWriteItem (25 items per call, duplicate keys
within a call collapsed to the last request), from a few threads, each through a client built
with `Config(retries={"max_attempts": 10, "mode": "adaptive"})`, so throttling errors are retried
with exponential backoff and client-side rate limiting. Items DynamoDB accepts but leaves in
`UnprocessedItems` (its answer when a partition runs out of capacity) are re-sent by
`send_with_backoff` after a capped, jittered, growing pause, at most `Backoff.max_attempts` times;
if some never drain the load fails in one line naming the table and how many items are left.
(boto3's `Table.batch_writer` re-sends unprocessed items at once, with no pause and no limit,
which is why it is not used.) Before writing anything, a load whose batch is older than the
active version's (the pointer's `batch`) is refused unless `allow_older=True`. Then ONE
TransactWriteItems moves the pointer and registers the version: a PutItem of the pointer
conditioned on `attribute_not_exists(user_id)` for the first load, else `current_version = <the
version this load saw at its start>`, and a PutItem of the registry item. Readers switch in one
step (they read only the pointer), and of two overlapping loads the later switch fails loudly
instead of silently winning. `activate(version)` is the same kind of transaction: a
ConditionCheck that the version's registry item still exists and the conditional pointer PutItem.

A delta load (`delta=True`) writes only its users' items; its chain is its own id followed by
the pointer's chain, refused past `max_delta_chain` deltas. Finally versions beyond the newest
`keep_versions` (3 by default; the active one and every base of a kept version are always kept)
are removed. Each one's registry item goes first, in a transaction with a ConditionCheck that the
pointer neither names it nor holds it in its chain (so a concurrent `activate` either wins and the
version stays, or finds it gone); `activate` checks every version of the chain is registered. Then every user item whose version sorts before the new one and is not registered is
deleted: a Scan projected to the key attributes and filtered on `version < new` and not one of
the retained versions (the filter does not reduce the cost: a Scan consumes read units for every
item it reads, about 0.5 RCU per 4 KB eventually consistent, i.e. roughly (retained + new items)
x ~1.5 KB / 8 KB -> ~160k RCU, a few cents on demand, for 4 x 206k users), then batched
DeleteItems (one write unit per item, ~206k WRU per removed version for the full dataset).
Versions sort by load start time, so leftovers of an interrupted load (never registered) are
removed by the next load.

Reads: `top_k` reads the pointer (cached for `pointer_ttl_s`, 5 s by default, saving one read per
request; a reader may therefore keep serving the previous version for up to 5 s after a switch or
an `activate`, which is fine because items are deleted only after a switch, and the previous
version is usually retained anyway) and then one GetItem of
`(user_id, version)`. If that item is missing (the cached version was just cleaned up, or the
user is unknown), it re-reads the pointer, and if the version changed or was switched in within
the last minute (an eventually consistent read may not see fresh items yet) it reads the item
again with ConsistentRead. So a user present in both the old and the new version is never
reported missing while a load runs; an unknown user costs ~2 read units instead of 0.5. When the
active version is a delta, the GetItem is replaced by one Query of the user's partition between
the chain's oldest and newest version, newest first, `Limit=1` (the same ~1.5 read units for a
list, 0.5 for an unknown user), keeping the first item whose version is in the pointer's chain (a
version outside it, e.g. of another branch, costs one more page). For a short while after a switch
an eventually consistent Query may still return a delta user's base list instead of the new one.
Similar items are one GetItem of `(-product_id, similar_version)`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from instarec_assets.backends.recommendations import (
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_MAX_DELTA_CHAIN,
    DELTA,
    FULL,
    ITEM_FIELDS,
    MAX_RANK,
    LoadReport,
    RecommendationsInput,
    ServingStoreError,
    UserRecommendations,
    VersionRecord,
    check_batch,
    check_k,
    check_keep_versions,
    check_max_delta_chain,
    check_user_id,
    iter_user_lists,
    new_version_id,
    recommendation_from_item,
    refuse_delta,
    refuse_older_batch,
    unknown_version,
)
from instarec_assets.backends.similar_items import (
    SIMILAR_FIELDS,
    SimilarItemsInput,
    SimilarProducts,
    iter_product_lists,
    similar_from_entry,
)
from instarec_assets.settings import Settings

POINTER_USER_ID = 0
POINTER_VERSION = "CURRENT"
KEY_ATTRIBUTES = ("user_id", "version")
# Writes: retry throttling (and 5xx) up to 10 times with backoff and client-side rate limiting.
WRITE_RETRY_CONFIG = {"max_attempts": 10, "mode": "adaptive"}
# Reads on the request path: fail fast so an API request is answered within its timeout.
READ_RETRY_CONFIG = {"max_attempts": 3, "mode": "standard"}
WRITE_CHUNK = 500  # items handed to one writer thread at a time (20 BatchWriteItem calls)
BATCH_WRITE_LIMIT = 25  # items per BatchWriteItem call (DynamoDB's limit)
FRESH_SWITCH_S = 60.0

WriteRequest = dict[str, Any]  # {"PutRequest": {"Item": ...}} or {"DeleteRequest": {"Key": ...}}


@dataclass(frozen=True)
class Backoff:
    """Pauses before re-sending UnprocessedItems: capped exponential growth with equal jitter.

    Equal jitter (half the step fixed, half random) spreads the writer threads apart like full
    jitter does, but never retries at once: unprocessed items mean the table is short of capacity
    right now, so an immediate retry would only be refused again.
    """

    max_attempts: int = 10  # BatchWriteItem calls per batch, the first included
    base_s: float = 0.05
    cap_s: float = 5.0

    def delay(self, retry: int, jitter: float) -> float:
        """Seconds before retry number `retry` (1, 2, ...); `jitter` is uniform in [0, 1)."""
        step = min(self.cap_s, self.base_s * 2 ** (retry - 1))
        return step / 2 + step / 2 * jitter


def send_with_backoff(
    send: Callable[[list[WriteRequest]], list[WriteRequest]],
    requests: list[WriteRequest],
    *,
    table_name: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> int:
    """Send one batch, then re-send what `send` returns as unprocessed until nothing is left.

    `send` makes one BatchWriteItem call and returns its UnprocessedItems for this table. Returns
    the number of calls made; raises ServingStoreError if items remain after `backoff.max_attempts`.
    """
    pending = requests
    for attempt in range(1, backoff.max_attempts + 1):
        if attempt > 1:
            sleep(backoff.delay(attempt - 1, jitter()))
        pending = send(pending)
        if not pending:
            return attempt
    raise ServingStoreError(
        f"DynamoDB table {table_name}: {len(pending)} of {len(requests)} items still unprocessed after "
        f"{backoff.max_attempts} BatchWriteItem attempts with backoff (the table is short of write capacity)"
    )


def write_batches(requests: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[list[WriteRequest]]:
    """("put", item) / ("delete", key) pairs as BatchWriteItem batches of at most 25 requests.

    DynamoDB rejects a batch that names one key twice, so a later request for a key replaces an
    earlier one still in the same batch (what `batch_writer(overwrite_by_pkeys=...)` did).
    """
    batch: dict[tuple[Any, ...], WriteRequest] = {}
    for action, payload in requests:
        key = tuple(payload[name] for name in KEY_ATTRIBUTES)
        batch.pop(key, None)
        batch[key] = (
            {"PutRequest": {"Item": payload}} if action == "put" else {"DeleteRequest": {"Key": payload}}
        )
        if len(batch) == BATCH_WRITE_LIMIT:
            yield list(batch.values())
            batch = {}
    if batch:
        yield list(batch.values())


@dataclass(frozen=True)
class Pointer:
    version: str
    model_version: str
    switched_at_epoch: float
    batch: str | None = None  # None: switched in before versions recorded their batch
    chain: tuple[str, ...] = ()  # the version and its bases, newest first; () read as (version,)
    similar_version: str | None = None  # the version whose similar items the chain reads; None: none

    @property
    def versions(self) -> tuple[str, ...]:
        return self.chain or (self.version,)


def chain_of(version: str, registry: dict[str, dict[str, Any]]) -> list[str]:
    """The version and its bases, newest first, by the registry items' `base_version` (a full
    version, or one registered before delta versions existed, ends it)."""
    chain = [version]
    while registry.get(chain[-1], {}).get("kind") == DELTA:
        base = registry[chain[-1]].get("base_version")
        if not base or base in chain:
            break
        chain.append(base)
    return chain


def similar_version_of(chain: list[str], registry: dict[str, dict[str, Any]]) -> str | None:
    """The newest version in `chain` loaded with similar items (a delta without them reads its
    base's); a version registered before this was recorded is taken to hold its own."""
    for version in chain:
        item = registry.get(version, {})
        if item.get("similar", item.get("kind", FULL) == FULL):
            return version
    return None


class DynamoDbRecommendationStore:
    """`RecommendationStore` over one DynamoDB table; clients are thread-safe, so is `top_k`."""

    backend = "dynamodb"

    def __init__(
        self,
        table_name: str,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
        pointer_ttl_s: float = 5.0,
        writers: int = 4,
        write_backoff: Backoff | None = None,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        max_delta_chain: int = DEFAULT_MAX_DELTA_CHAIN,
    ):
        if not table_name:
            raise ServingStoreError("a DynamoDB table name is required (INSTAREC_DYNAMODB_TABLE)")
        self.table_name = table_name
        self.keep_versions = check_keep_versions(keep_versions)
        self.max_delta_chain = check_max_delta_chain(max_delta_chain)
        self.pointer_ttl_s = pointer_ttl_s
        self.writers = max(1, writers)
        self.write_backoff = write_backoff or Backoff()
        session = session or boto3.session.Session()
        region = region_name or Settings.from_env().region
        common: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            common["endpoint_url"] = endpoint_url
        self.write_config = Config(retries=dict(WRITE_RETRY_CONFIG), max_pool_connections=self.writers + 4)
        self.read_config = Config(
            retries=dict(READ_RETRY_CONFIG), connect_timeout=2, read_timeout=3, max_pool_connections=50
        )
        self._client = session.client("dynamodb", config=self.read_config, **common)
        self._write_client = session.client("dynamodb", config=self.write_config, **common)
        self._resource = session.resource("dynamodb", config=self.write_config, **common)
        self._pointer_lock = threading.Lock()
        self._pointer_cache: tuple[float, Pointer | None] | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> DynamoDbRecommendationStore:
        """INSTAREC_DYNAMODB_TABLE, AWS_REGION and the optional INSTAREC_AWS_ENDPOINT_URL."""
        settings = Settings.from_env()
        return cls(settings.dynamodb_table, endpoint_url=settings.endpoint_url or None, **kwargs)

    def __repr__(self) -> str:
        return f"DynamoDbRecommendationStore({self.table_name!r})"

    @property
    def subject(self) -> str:
        return f"serving store DynamoDB table {self.table_name}"

    # ------------------------------------------------------------ table
    def ensure_table(self, wait_s: float = 120.0) -> bool:
        """Create the table (on-demand) if it does not exist; True if it was created."""
        try:
            self._write_client.describe_table(TableName=self.table_name)
            return False
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        self._write_client.create_table(
            TableName=self.table_name,
            AttributeDefinitions=[
                {"AttributeName": "user_id", "AttributeType": "N"},
                {"AttributeName": "version", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "user_id", "KeyType": "HASH"},
                {"AttributeName": "version", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self._write_client.get_waiter("table_exists").wait(
            TableName=self.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(wait_s))}
        )
        return True

    # ------------------------------------------------------------ pointer
    def _read_pointer(self, consistent: bool = False) -> Pointer | None:
        response = self._client.get_item(
            TableName=self.table_name,
            Key={"user_id": {"N": str(POINTER_USER_ID)}, "version": {"S": POINTER_VERSION}},
            ConsistentRead=consistent,
        )
        item = response.get("Item")
        pointer = None
        if item is not None:
            version = item["current_version"]["S"]
            similar = item.get("similar_version", {}).get("S", version)  # absent: written before deltas
            pointer = Pointer(
                version=version,
                model_version=item["model_version"]["S"],
                switched_at_epoch=float(item.get("switched_at_epoch", {}).get("N", "0")),
                batch=item.get("batch", {}).get("S"),
                chain=tuple(entry["S"] for entry in item.get("chain", {}).get("L", [])),
                similar_version=similar or None,
            )
        with self._pointer_lock:
            self._pointer_cache = (time.monotonic(), pointer)
        return pointer

    def _pointer(self) -> Pointer | None:
        cached = self._pointer_cache
        if cached is not None and time.monotonic() - cached[0] < self.pointer_ttl_s:
            return cached[1]
        return self._read_pointer()

    def current_version(self) -> str | None:
        """The version readers see now (read consistently, bypassing the cache)."""
        pointer = self._read_pointer(consistent=True)
        return pointer.version if pointer else None

    def current_info(self) -> dict[str, Any] | None:
        response = self._client.get_item(
            TableName=self.table_name,
            Key={"user_id": {"N": str(POINTER_USER_ID)}, "version": {"S": POINTER_VERSION}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        if item is None:
            return None
        return {name: next(iter(value.values())) for name, value in item.items()}

    # ------------------------------------------------------------ reads
    def _get_item(self, user_id: int, version: str, consistent: bool) -> dict[str, Any] | None:
        response = self._client.get_item(
            TableName=self.table_name,
            Key={"user_id": {"N": str(user_id)}, "version": {"S": version}},
            ConsistentRead=consistent,
        )
        return response.get("Item")

    def _query_chain(self, key: int, chain: tuple[str, ...], consistent: bool) -> dict[str, Any] | None:
        """The item of partition `key` of the newest version in `chain`: a Query of the partition
        between the chain's oldest and newest version, newest first, one item a page; a page
        holding a version outside the chain (another branch, an interrupted load) asks the next."""
        members = set(chain)
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "user_id = :key AND #v BETWEEN :oldest AND :newest",
            "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {
                ":key": {"N": str(key)},
                ":oldest": {"S": min(chain)},
                ":newest": {"S": max(chain)},
            },
            "ScanIndexForward": False,
            "Limit": 1,
            "ConsistentRead": consistent,
        }
        while True:
            response = self._client.query(**request)
            for item in response.get("Items", []):
                if item["version"]["S"] in members:
                    return item
            if "LastEvaluatedKey" not in response:
                return None
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _resolve(self, key: int, pointer: Pointer, similar: bool, consistent: bool) -> dict[str, Any] | None:
        if similar:
            version = pointer.similar_version
            return self._get_item(key, version, consistent) if version else None
        if len(pointer.versions) == 1:
            return self._get_item(key, pointer.version, consistent)
        return self._query_chain(key, pointer.versions, consistent)

    def _current_item(self, key: int, similar: bool = False) -> tuple[Pointer, dict[str, Any]] | None:
        """The item of partition `key` in the current version, or for a delta the newest of its
        chain holding one (`similar`: the similar items the chain reads). Cached pointer; on a
        miss the pointer is re-read and, after a recent switch, the item read consistently."""
        pointer = self._pointer()
        if pointer is None:
            return None
        item = self._resolve(key, pointer, similar, consistent=False)
        if item is None:
            fresh = self._read_pointer()
            if fresh is None:
                return None
            recent = time.time() - fresh.switched_at_epoch < FRESH_SWITCH_S
            if fresh.version == pointer.version and not recent:
                return None
            pointer = fresh
            item = self._resolve(key, pointer, similar, consistent=True)
            if item is None:
                return None
        return pointer, item

    def similar(self, product_id: int, k: int = 10) -> SimilarProducts | None:
        """The product's similar items from the current version (item `user_id = -product_id`);
        None when the version holds none for it."""
        check_k(k)
        if product_id <= 0:
            return None
        found = self._current_item(-product_id, similar=True)
        if found is None or "similar" not in found[1]:
            return None
        pointer, item = found
        entries = json.loads(item["similar"]["S"])[:k]
        return SimilarProducts(
            product_id=product_id,
            version=pointer.version,
            items=tuple(similar_from_entry([entry[name] for name in SIMILAR_FIELDS]) for entry in entries),
        )

    def top_k(self, user_id: int, k: int = MAX_RANK) -> UserRecommendations | None:
        check_k(k)
        if user_id <= POINTER_USER_ID:
            return None
        found = self._current_item(user_id)
        if found is None or "recommendations" not in found[1]:
            return None
        pointer, item = found
        entries = json.loads(item["recommendations"]["S"])[:k]
        return UserRecommendations(
            user_id=user_id,
            model_version=item["model_version"]["S"],
            version=pointer.version,
            # an item stored before lists named their source has no "source": derived from explore
            items=tuple(
                recommendation_from_item([*(entry[name] for name in ITEM_FIELDS[:-1]), entry.get("source")])
                for entry in entries
            ),
        )

    # ------------------------------------------------------------ load
    def load(
        self,
        recommendations: RecommendationsInput,
        model_version: str,
        *,
        batch: str,
        allow_older: bool = False,
        similar_items: SimilarItemsInput | None = None,
        delta: bool = False,
    ) -> LoadReport:
        """A new version (every user's list, or with `delta` only these users' on top of the
        active chain), written, then switched in by one transaction; see the module doc."""
        batch = check_batch(batch)
        lists = iter_user_lists(recommendations, model_version)
        similar = iter_product_lists(similar_items) if similar_items is not None else iter(())
        version = new_version_id()
        previous = self._read_pointer(consistent=True)
        if delta:
            refuse_delta(self.subject, list(previous.versions) if previous else [], self.max_delta_chain)
        refuse_older_batch(self.subject, batch, previous.batch if previous else None, allow_older)
        chain = (version, *previous.versions) if delta and previous else (version,)
        similar_version = version if similar_items is not None else None
        if delta and similar_items is None and previous is not None:
            similar_version = previous.similar_version
        loaded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        written_users: list[int] = []
        counts = {"rows": 0, "max_item_bytes": 0, "similar_products": 0, "similar_rows": 0}
        similar_keys: list[int] = []

        def items() -> Iterator[tuple[str, dict[str, Any]]]:
            for user_id, rows in lists:
                payload = json.dumps(
                    [dict(zip(ITEM_FIELDS, row, strict=True)) for row in rows],
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                counts["rows"] += len(rows)
                counts["max_item_bytes"] = max(counts["max_item_bytes"], len(payload.encode()) + 120)
                written_users.append(user_id)
                yield (
                    "put",
                    {
                        "user_id": user_id,
                        "version": version,
                        "model_version": model_version,
                        "loaded_at": loaded_at,
                        "recommendations": payload,
                    },
                )
            if not written_users:
                return
            for product_id, entries in similar:
                payload = json.dumps(
                    [dict(zip(SIMILAR_FIELDS, entry, strict=True)) for entry in entries],
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                counts["similar_products"] += 1
                counts["similar_rows"] += len(entries)
                counts["max_item_bytes"] = max(counts["max_item_bytes"], len(payload.encode()) + 120)
                similar_keys.append(-product_id)
                yield (
                    "put",
                    {"user_id": -product_id, "version": version, "loaded_at": loaded_at, "similar": payload},
                )

        started = time.perf_counter()
        try:
            self._write(items())
        except BaseException:
            self._discard(version, [*written_users, *similar_keys])
            raise
        if not written_users:
            raise ServingStoreError("no recommendations to load: the input has no rows")
        filled = time.perf_counter()
        record = VersionRecord(
            version,
            batch,
            model_version,
            loaded_at,
            len(written_users),
            counts["rows"],
            active=True,
            kind=DELTA if delta else FULL,
            base_version=previous.version if delta and previous else None,
        )
        pointer = Pointer(version, model_version, 0.0, batch, chain, similar_version)
        self._switch(record, previous, [*written_users, *similar_keys], pointer, similar_items is not None)
        switched = time.perf_counter()
        removed_versions, removed_items, scanned = self._remove_beyond(version)
        cleaned = time.perf_counter()
        return LoadReport(
            backend=self.backend,
            version=version,
            batch=batch,
            model_version=model_version,
            previous_version=previous.version if previous else None,
            users=len(written_users),
            rows=counts["rows"],
            kind=record.kind,
            base_version=record.base_version,
            chain_length=len(chain),
            removed_versions=tuple(sorted(removed_versions)),
            removed_items=removed_items,
            write_seconds=filled - started,
            switch_seconds=switched - filled,
            cleanup_seconds=cleaned - switched,
            extra={
                "table": self.table_name,
                "max_item_bytes": counts["max_item_bytes"],
                "cleanup_scanned_items": scanned,
                "similar_products": counts["similar_products"],
                "similar_rows": counts["similar_rows"],
            },
        )

    def _pointer_put(
        self, record: VersionRecord, previous: Pointer | None, pointer: Pointer
    ) -> tuple[dict[str, Any], float]:
        """The pointer PutItem naming `record` (with `pointer`'s chain and similar-items version),
        conditioned on the pointer still naming `previous`."""
        now = time.time()
        item = {
            "user_id": {"N": str(POINTER_USER_ID)},
            "version": {"S": POINTER_VERSION},
            "current_version": {"S": record.version},
            "model_version": {"S": record.model_version},
            "previous_version": {"S": previous.version if previous else ""},
            "switched_at": {"S": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")},
            "switched_at_epoch": {"N": repr(now)},
            "users": {"N": str(record.users)},
            "rows": {"N": str(record.items)},
            "kind": {"S": record.kind},
            "chain": {"L": [{"S": version} for version in pointer.versions]},
            "similar_version": {"S": pointer.similar_version or ""},
        }
        if record.batch is not None:
            item["batch"] = {"S": record.batch}
        if record.base_version is not None:
            item["base_version"] = {"S": record.base_version}
        put: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(user_id)",
        }
        if previous is not None:
            put["ConditionExpression"] = "current_version = :expected"
            put["ExpressionAttributeValues"] = {":expected": {"S": previous.version}}
        return put, now

    def _registry_item(self, record: VersionRecord, has_similar: bool) -> dict[str, Any]:
        item = {
            "user_id": {"N": str(POINTER_USER_ID)},
            "version": {"S": record.version},
            "model_version": {"S": record.model_version},
            "loaded_at": {"S": record.loaded_at},
            "users": {"N": str(record.users)},
            "rows": {"N": str(record.items)},
            "kind": {"S": record.kind},
            "similar": {"BOOL": has_similar},
        }
        if record.batch is not None:
            item["batch"] = {"S": record.batch}
        if record.base_version is not None:
            item["base_version"] = {"S": record.base_version}
        return item

    def _registry_key(self, version: str) -> dict[str, Any]:
        return {"user_id": {"N": str(POINTER_USER_ID)}, "version": {"S": version}}

    def _cache_pointer(self, pointer: Pointer, switched_at_epoch: float) -> None:
        with self._pointer_lock:
            self._pointer_cache = (
                time.monotonic(),
                Pointer(
                    pointer.version,
                    pointer.model_version,
                    switched_at_epoch,
                    pointer.batch,
                    pointer.chain,
                    pointer.similar_version,
                ),
            )

    def _switch(
        self,
        record: VersionRecord,
        previous: Pointer | None,
        written_users: list[int],
        pointer: Pointer,
        has_similar: bool,
    ) -> None:
        """Move the pointer and register the version in one transaction: the only step readers
        can observe (they read the pointer alone)."""
        put, now = self._pointer_put(record, previous, pointer)
        try:
            self._write_client.transact_write_items(
                TransactItems=[
                    {"Put": put},
                    {"Put": {"TableName": self.table_name, "Item": self._registry_item(record, has_similar)}},
                ]
            )
        except ClientError as error:
            if _cancelled_by(error) != [0]:
                raise
            self._discard(record.version, written_users)
            seen = previous.version if previous else "none"
            raise ServingStoreError(
                f"another load switched {self.table_name} while version {record.version} was written "
                f"(current version was {seen} when this load started); {record.version} was discarded"
            ) from None
        self._cache_pointer(pointer, now)

    # ------------------------------------------------------------ versions
    def _registry(self) -> list[dict[str, Any]]:
        """Partition 0 read consistently: the pointer and the registry items (plain values)."""
        found: list[dict[str, Any]] = []
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="user_id = :pointer",
            ExpressionAttributeValues={":pointer": {"N": str(POINTER_USER_ID)}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                found.append({name: next(iter(value.values())) for name, value in item.items()})
        return found

    def versions(self) -> list[VersionRecord]:
        """The retained versions, newest load first (one Query of the registry partition)."""
        items = self._registry()
        pointer = next((item for item in items if item["version"] == POINTER_VERSION), None)
        active = pointer["current_version"] if pointer else None
        records = [
            VersionRecord(
                version=item["version"],
                batch=item.get("batch"),
                model_version=item["model_version"],
                loaded_at=item.get("loaded_at", ""),
                users=int(item.get("users", 0)),
                items=int(item.get("rows", 0)),
                active=item["version"] == active,
                kind=item.get("kind", FULL),
                base_version=item.get("base_version"),
            )
            for item in items
            if item["version"] != POINTER_VERSION
        ]
        if pointer is not None and not any(record.active for record in records):
            # switched in before versions were registered: described by the pointer alone
            records.append(
                VersionRecord(
                    active,
                    pointer.get("batch"),
                    pointer["model_version"],
                    pointer.get("switched_at", ""),
                    int(pointer.get("users", 0)),
                    int(pointer.get("rows", 0)),
                    active=True,
                )
            )
        return sorted(records, key=lambda record: record.version, reverse=True)

    def activate(self, version_id: str) -> VersionRecord:
        """Switch readers to a retained version in one transaction: the version's registry item
        must still exist, and the pointer must still name the version read just before."""
        records = self.versions()
        chosen = next((r for r in records if r.version == version_id and version_id != POINTER_VERSION), None)
        if chosen is None:
            raise unknown_version(self.subject, version_id, [r.version for r in records])
        current = next((r for r in records if r.active), None)
        previous = Pointer(current.version, current.model_version, 0.0, current.batch) if current else None
        record = VersionRecord(
            chosen.version,
            chosen.batch,
            chosen.model_version,
            chosen.loaded_at,
            chosen.users,
            chosen.items,
            True,
            chosen.kind,
            chosen.base_version,
        )
        registry = {item["version"]: item for item in self._registry()}
        chain = chain_of(version_id, registry)
        if registry.get(chain[-1], {}).get("kind") == DELTA:
            raise ServingStoreError(
                f"{self.subject}: version {version_id} reads through versions that are gone; load a full version"
            )
        pointer = Pointer(
            chosen.version,
            chosen.model_version,
            0.0,
            chosen.batch,
            tuple(chain),
            similar_version_of(chain, registry),
        )
        put, now = self._pointer_put(record, previous, pointer)
        checks = [  # every version of the chain still registered (retention keeps a kept version's bases)
            {
                "ConditionCheck": {
                    "TableName": self.table_name,
                    "Key": self._registry_key(version),
                    "ConditionExpression": "attribute_exists(version)",
                }
            }
            for version in chain
        ]
        try:
            self._write_client.transact_write_items(TransactItems=[*checks, {"Put": put}])
        except ClientError as error:
            failed = _cancelled_by(error)
            if failed is None:
                raise
            if min(failed) < len(checks):
                raise unknown_version(
                    self.subject, version_id, [r.version for r in self.versions()]
                ) from None
            raise ServingStoreError(
                f"{self.subject}: another load or activate switched the active version while "
                f"activating {version_id}; nothing was changed, try again"
            ) from None
        self._cache_pointer(pointer, now)
        return record

    def chain(self, version_id: str | None = None) -> list[str]:
        """The versions a read of `version_id` (default: the active one, from the pointer)
        resolves through, newest first, ending with a full version; [] when none is active."""
        if version_id is None:
            pointer = self._read_pointer(consistent=True)
            return list(pointer.versions) if pointer else []
        registry = {item["version"]: item for item in self._registry() if item["version"] != POINTER_VERSION}
        if version_id not in registry:
            raise unknown_version(self.subject, version_id, sorted(registry, reverse=True))
        return chain_of(version_id, registry)

    def _remove_beyond(self, version: str) -> tuple[set[str], int, int]:
        """Unregister versions older than `version` beyond the newest `keep_versions` (never the
        active one), then delete the items of every unregistered version older than `version`;
        returns the versions removed, items deleted and items scanned."""
        items = self._registry()
        pointer = next((item for item in items if item["version"] == POINTER_VERSION), None)
        registered = sorted(
            (item["version"] for item in items if item["version"] != POINTER_VERSION), reverse=True
        )
        kept = set(registered[: self.keep_versions])
        if pointer is not None:
            kept.add(pointer["current_version"])
        registry = {item["version"]: item for item in items if item["version"] != POINTER_VERSION}
        for version_kept in list(kept):  # a kept delta keeps its base, and the base's base ...
            kept.update(chain_of(version_kept, registry))
        removed: set[str] = set()
        for old in registered:
            if old in kept or old >= version:
                continue
            try:
                self._write_client.transact_write_items(
                    TransactItems=[
                        {
                            "ConditionCheck": {
                                "TableName": self.table_name,
                                "Key": self._registry_key(POINTER_VERSION),
                                "ConditionExpression": "current_version <> :old AND NOT contains(#chain, :old)",
                                "ExpressionAttributeNames": {"#chain": "chain"},
                                "ExpressionAttributeValues": {":old": {"S": old}},
                            }
                        },
                        {"Delete": {"TableName": self.table_name, "Key": self._registry_key(old)}},
                    ]
                )
            except ClientError as error:
                if _cancelled_by(error) is None:
                    raise
                continue  # activated meanwhile: it stays
            removed.add(old)
        retained = set(registered) - removed
        versions, deleted, scanned = self._delete_items_except(version, retained)
        return removed | versions, deleted, scanned

    def _delete_items_except(self, version: str, retained: set[str]) -> tuple[set[str], int, int]:
        """Delete every user item whose version sorts before `version` and is not retained."""
        versions: set[str] = set()
        scanned = 0
        count = {"deleted": 0}
        names = sorted(retained)[:99]  # an IN list holds at most 100 values
        values: dict[str, Any] = {":current": {"S": version}, ":pointer": {"N": str(POINTER_USER_ID)}}
        values.update({f":k{index}": {"S": name} for index, name in enumerate(names)})
        condition = "#v < :current AND user_id <> :pointer"  # users (> 0) and products (< 0)
        if names:
            condition += " AND NOT (#v IN (" + ", ".join(f":k{index}" for index in range(len(names))) + "))"

        def keys() -> Iterator[tuple[str, dict[str, Any]]]:
            nonlocal scanned
            paginator = self._write_client.get_paginator("scan")
            for page in paginator.paginate(
                TableName=self.table_name,
                ProjectionExpression="user_id, #v",
                FilterExpression=condition,
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues=values,
            ):
                scanned += page.get("ScannedCount", 0)
                for key in page.get("Items", []):
                    old = key["version"]["S"]
                    if old in retained:
                        continue
                    versions.add(old)
                    count["deleted"] += 1
                    yield "delete", {"user_id": int(key["user_id"]["N"]), "version": old}

        self._write(keys())
        return versions, count["deleted"], scanned

    def _discard(self, version: str, user_ids: Iterable[int]) -> None:
        """Best effort: remove the items a failed load wrote (the next load would remove them anyway)."""
        # The original error matters more than this one; leftovers are removed by the next load.
        with contextlib.suppress(Exception):
            self._write(("delete", {"user_id": user_id, "version": version}) for user_id in list(user_ids))

    def _write(self, requests: Iterator[tuple[str, dict[str, Any]]]) -> None:
        """Send puts/deletes as BatchWriteItem calls from `self.writers` threads, unprocessed items
        re-sent with `self.write_backoff`."""
        # The resource's client converts plain Python values to DynamoDB's typed JSON and back.
        client = self._resource.meta.client

        def send_once(batch: list[WriteRequest]) -> list[WriteRequest]:
            response = client.batch_write_item(RequestItems={self.table_name: batch})
            return (response.get("UnprocessedItems") or {}).get(self.table_name, [])

        def send(chunk: list[tuple[str, dict[str, Any]]]) -> None:
            for batch in write_batches(chunk):
                send_with_backoff(send_once, batch, table_name=self.table_name, backoff=self.write_backoff)

        with ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="dynamodb-writer") as pool:
            pending: set[Future] = set()
            try:
                for chunk in _chunks(requests, WRITE_CHUNK):
                    while len(pending) >= self.writers * 2:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                    pending.add(pool.submit(send, chunk))
                for future in pending:
                    future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise

    def forget_user(self, user_id: int) -> dict[str, int]:
        """Delete every item of a user (all versions: the partition key is the user id); items
        removed per version. One Query of the user's partition, then batched DeleteItems; then
        each version's registry item (and the pointer, for the active one) counts one user and
        that list's rows fewer, as the SQLite store's registry does."""
        check_user_id(user_id)
        rows: dict[str, int] = {}
        paginator = self._write_client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="user_id = :user",
            ProjectionExpression="#v, recommendations",
            ExpressionAttributeNames={"#v": "version"},
            ExpressionAttributeValues={":user": {"N": str(user_id)}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                listed = item.get("recommendations", {}).get("S")
                rows[item["version"]["S"]] = len(json.loads(listed)) if listed else 0
        self._write(("delete", {"user_id": user_id, "version": version}) for version in rows)
        for version, count in rows.items():
            self._uncount(self._registry_key(version), "attribute_exists(version)", {}, count)
            self._uncount(
                self._registry_key(POINTER_VERSION),
                "current_version = :version",
                {":version": {"S": version}},
                count,
            )
        return dict.fromkeys(rows, 1)

    def _uncount(self, key: dict[str, Any], condition: str, values: dict[str, Any], rows: int) -> None:
        """One user and `rows` rows fewer on a registry item or the pointer, if `condition` holds."""
        try:
            self._write_client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET #users = #users - :one, #rows = #rows - :rows",
                ConditionExpression=f"{condition} AND attribute_exists(#users)",
                ExpressionAttributeNames={"#users": "users", "#rows": "rows"},
                ExpressionAttributeValues={":one": {"N": "1"}, ":rows": {"N": str(rows)}, **values},
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    # ------------------------------------------------------------ inspection (tests, operations)
    def stored_versions(self) -> dict[str, int]:
        """Items per version, pointer excluded. A full Scan: for tests and operations, not requests."""
        found: dict[str, int] = {}
        paginator = self._client.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self.table_name,
            ProjectionExpression="user_id, #v",
            ExpressionAttributeNames={"#v": "version"},
        ):
            for key in page.get("Items", []):
                if int(key["user_id"]["N"]) == POINTER_USER_ID:
                    continue
                found[key["version"]["S"]] = found.get(key["version"]["S"], 0) + 1
        return found


def _cancelled_by(error: ClientError) -> list[int] | None:
    """For a transaction cancelled by failed conditions, the indexes of the items whose condition
    failed; None for any other error (throttling, a conflict with another transaction, ...)."""
    response = error.response
    code = response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return [0]
    if code != "TransactionCanceledException":
        return None
    reasons = response.get("CancellationReasons") or []
    failed = [index for index, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"]
    if failed:
        return failed
    # without CancellationReasons, the message lists them: "... reasons [ConditionalCheckFailed, None]"
    listed = re.search(r"\[([^\]]*)\]\s*$", response.get("Error", {}).get("Message", ""))
    if listed is None:
        return None
    codes = [code.strip() for code in listed.group(1).split(",")]
    return [index for index, code in enumerate(codes) if code == "ConditionalCheckFailed"] or None


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in iterable:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
