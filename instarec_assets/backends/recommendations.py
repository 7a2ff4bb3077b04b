"""What a serving store holds: each user's ranked candidates (top 10, explore, up to 50, or the
cold-start popular tier) for one version.

Shared by the SQLite and DynamoDB stores: the row schema, the records `top_k` returns, the load
report, version ids, and the one input path (`iter_user_lists`) that validates rows and groups
them per user, so both stores accept and reject exactly the same input.

numpy and pyarrow are imported only by the load path (and `ROW_SCHEMA` on first use): the read
path (`top_k`, the records) must import with the standard library and boto3 alone, which is all
the serving Lambda ships (`infra/scripts/package_lambda.sh`).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa

MAX_RANK = 52  # top 10 reorder items, up to 2 explore items, then reorder candidates 11..50
# Where an item comes from: a scored reorder candidate, an explore item (new to the shopper), or the
# cold-start popular tier. A row's position in this tuple is its source code, what the SQLite store
# keeps in its `explore` column (0 and 1 are what that boolean column always held, so older tables
# read the same) and the lookups hand the renderer.
SOURCES = ("model", "explore", "popular")
SOURCE_CODES = {source: code for code, source in enumerate(SOURCES)}
DEFAULT_KEEP_VERSIONS = 3  # loaded versions a store retains, the active one among them
DEFAULT_MAX_DELTA_CHAIN = 8  # delta versions a chain may stack on its full version
FULL, DELTA = "full", "delta"  # a version's kind: every user's list, or only some on top of a base
BATCH_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@functools.cache
def row_schema() -> pa.Schema:
    """The row schema of a recommendation, in this column order (`ROW_SCHEMA`)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("rank", pa.int64(), nullable=False),
            pa.field("product_id", pa.int64(), nullable=False),
            pa.field("product_name", pa.string(), nullable=False),
            pa.field("aisle", pa.string(), nullable=False),
            pa.field("department", pa.string(), nullable=False),
            pa.field("probability", pa.float64(), nullable=False),
            pa.field("explore", pa.bool_(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


def __getattr__(name: str) -> Any:
    if name == "ROW_SCHEMA":  # built on first use, so that importing this module needs no pyarrow
        return row_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REQUIRED_COLUMNS = ("user_id", "rank", "product_id", "product_name", "aisle", "department", "probability")
# One entry of a user's list as stored: everything but user_id and model_version (kept per user/version).
ITEM_FIELDS = (
    "rank",
    "product_id",
    "product_name",
    "aisle",
    "department",
    "probability",
    "explore",
    "source",
)

RecommendationsInput = Any  # a Table, RecordBatch, DataFrame, RecordBatchReader or an iterable of those


class ServingStoreError(RuntimeError):
    """Bad input to a load, a load that lost a race with another load, a load from an older batch,
    an unknown version to activate, or a store that is not usable."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    rank: int
    product_id: int
    product_name: str
    aisle: str
    department: str
    probability: float
    explore: bool = False
    source: str = "model"  # one of SOURCES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UserRecommendations:
    """One user's list from the version that was current when it was read; items sorted by rank."""

    user_id: int
    model_version: str
    version: str
    items: tuple[Recommendation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "model_version": self.model_version,
            "version": self.version,
            "recommendations": [item.to_dict() for item in self.items],
        }


@dataclass(frozen=True)
class LoadReport:
    """What one `load` did; `as_metadata()` is flat, for Dagster materialization metadata."""

    backend: str
    version: str
    model_version: str
    previous_version: str | None
    users: int
    rows: int
    removed_versions: tuple[str, ...]
    removed_items: int
    write_seconds: float
    switch_seconds: float
    cleanup_seconds: float
    batch: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = FULL
    base_version: str | None = None  # a delta's base: the version active when it loaded
    chain_length: int = 1  # versions readers resolve through, this one and its bases

    @property
    def seconds(self) -> float:
        return self.write_seconds + self.switch_seconds + self.cleanup_seconds

    def as_metadata(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "batch": self.batch,
            "model_version": self.model_version,
            "kind": self.kind,
            "base_version": self.base_version or "",
            "chain_length": self.chain_length,
            "previous_version": self.previous_version or "",
            "users": self.users,
            "rows": self.rows,
            "removed_versions": ", ".join(self.removed_versions),
            "removed_items": self.removed_items,
            "write_seconds": round(self.write_seconds, 3),
            "switch_seconds": round(self.switch_seconds, 3),
            "cleanup_seconds": round(self.cleanup_seconds, 3),
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One retained version in a store's registry; `users` and `items` (recommendation rows) count
    what the version itself holds (a delta: only its users, the rest read through its base)."""

    version: str
    batch: str | None  # the landing batch (partition key) it was built from; None if loaded before batches
    model_version: str
    loaded_at: str
    users: int
    items: int
    active: bool
    kind: str = FULL
    base_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class RecommendationStore(Protocol):
    def load(
        self,
        recommendations: RecommendationsInput,
        model_version: str,
        *,
        batch: str,
        allow_older: bool = False,
        similar_items: Any = None,
        delta: bool = False,
    ) -> LoadReport:
        """Write a new version built from landing `batch`, switch readers to it in one step, then
        remove versions beyond the newest `keep_versions` (never a base a retained delta reads
        through). Refused (ServingStoreError) when `batch` is older than the active version's
        batch, unless `allow_older`. `delta=True`: the version holds only the given users, the
        others (and, when `similar_items` is None, similar items) read through the active chain."""
        ...

    def chain(self, version_id: str | None = None) -> list[str]:
        """The versions readers resolve through, newest first (the active one's by default; [] when
        none is active): the version, its base, ... down to the newest full version."""
        ...

    def versions(self) -> list[VersionRecord]:
        """The retained versions, newest load first, the active one flagged."""
        ...

    def activate(self, version_id: str) -> VersionRecord:
        """Switch readers to a retained version in one step (a rollback); its record, now active."""
        ...

    def top_k(self, user_id: int, k: int = MAX_RANK) -> UserRecommendations | None:
        """The user's list from the current version, at most k items by rank; None if unknown."""
        ...

    def current_version(self) -> str | None:
        """Id of the version readers see now; None before the first load."""
        ...


def new_version_id(now: dt.datetime | None = None) -> str:
    """`YYYYmmddTHHMMSSffffffZ-xxxxxx`: unique without coordination and ordered by load start time."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"


def check_user_id(user_id: int) -> int:
    """A shopper's id: a whole number from 1 (0 and negative keys are the stores' own items)."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        raise ServingStoreError(f"user_id must be a whole number from 1, not {user_id!r}")
    return user_id


def check_batch(batch: str) -> str:
    """A landing batch (partition key) `YYYY-MM-DD`; as strings these sort as the dates do."""
    if isinstance(batch, str) and BATCH_PATTERN.match(batch):
        try:
            dt.date.fromisoformat(batch)
        except ValueError:
            pass
        else:
            return batch
    raise ServingStoreError(f"batch must be a landing partition key YYYY-MM-DD, not {batch!r}")


def check_keep_versions(keep_versions: int) -> int:
    if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1:
        raise ValueError(f"keep_versions must be a positive integer, not {keep_versions!r}")
    return keep_versions


def check_max_delta_chain(max_delta_chain: int) -> int:
    if isinstance(max_delta_chain, bool) or not isinstance(max_delta_chain, int) or max_delta_chain < 0:
        raise ValueError(f"max_delta_chain must be a non-negative integer, not {max_delta_chain!r}")
    return max_delta_chain


def refuse_delta(subject: str, active_chain: list[str], max_delta_chain: int) -> None:
    """Raise when a delta load has no active version to build on, or would stack more deltas on
    the chain's full version than `max_delta_chain` (each read may probe every version of it)."""
    if not active_chain:
        raise ServingStoreError(
            f"{subject}: a delta load needs an active version to build on and there is none; load a full version first"
        )
    deltas = len(active_chain)  # the chain's deltas once this one is added: the full version drops out
    if deltas > max_delta_chain:
        raise ServingStoreError(
            f"{subject}: a delta load would stack {deltas} deltas on full version {active_chain[-1]}, over "
            f"INSTAREC_SERVING_MAX_DELTA_CHAIN={max_delta_chain}; load a full version (delta=False)"
        )


def refuse_older_batch(subject: str, batch: str, active_batch: str | None, allow_older: bool) -> None:
    """Raise when `batch` is older than the active version's (the store never goes backwards unless asked)."""
    if allow_older or active_batch is None or batch >= active_batch:
        return
    raise ServingStoreError(
        f"{subject}: refusing to load recommendations from batch {batch} over the active version built "
        f"from batch {active_batch} (use allow_older=True / instarec serving activate to roll back)"
    )


def unknown_version(subject: str, version_id: str, retained: Iterable[str]) -> ServingStoreError:
    names = ", ".join(retained) or "none"
    return ServingStoreError(
        f"{subject}: version {version_id!r} is not a retained version (retained: {names})"
    )


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    return k


# ---------------------------------------------------------------- input
def _as_tables(recommendations: RecommendationsInput) -> Iterator[pa.Table]:
    import pyarrow as pa

    if isinstance(recommendations, pa.Table):
        yield recommendations
        return
    if isinstance(recommendations, pa.RecordBatch):
        yield pa.Table.from_batches([recommendations])
        return
    if _is_dataframe(recommendations):
        yield pa.Table.from_pandas(recommendations, preserve_index=False)
        return
    if isinstance(recommendations, (str, bytes, dict)) or not isinstance(recommendations, Iterable):
        raise ServingStoreError(
            "recommendations must be a pyarrow Table, RecordBatch, pandas DataFrame, or an iterable of "
            f"those; got {type(recommendations).__name__}"
        )
    for batch in recommendations:
        if isinstance(batch, pa.Table):
            yield batch
        elif isinstance(batch, pa.RecordBatch):
            yield pa.Table.from_batches([batch])
        elif _is_dataframe(batch):
            yield pa.Table.from_pandas(batch, preserve_index=False)
        else:
            raise ServingStoreError(
                f"a recommendations batch must be a pyarrow Table, RecordBatch or pandas DataFrame; "
                f"got {type(batch).__name__}"
            )


def _is_dataframe(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("pandas") and type(value).__name__ == "DataFrame"


def _normalise(table: pa.Table, model_version: str) -> pa.Table:
    """Columns cast to ROW_SCHEMA, `explore` and `source` defaulted (a missing or null source: explore
    or model, as the explore flag says), `source` and `model_version` checked; errors name the column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = row_schema()
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise ServingStoreError(f"recommendations are missing column(s): {', '.join(missing)}")
    rows = table.num_rows
    columns = {}
    for schema_field in schema:
        name = schema_field.name
        if name == "source":  # explore or model as the explore flag says, where missing or null
            derived = pc.if_else(columns["explore"], "explore", "model").cast(pa.string())
            if name in table.column_names:
                try:
                    derived = pc.coalesce(table.column(name).cast(pa.string()), derived)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                    raise ServingStoreError(
                        f"recommendations column source ({table.column(name).type}) cannot be read as string: {error}"
                    ) from None
            columns[name] = derived
            continue
        if name not in table.column_names:
            if name == "explore":
                columns[name] = pa.array([False] * rows, pa.bool_())
                continue
            columns[name] = pa.array([model_version] * rows, pa.string())
            continue
        column = table.column(name)
        if column.null_count:
            raise ServingStoreError(f"recommendations column {name} has {column.null_count} null value(s)")
        try:
            columns[name] = column.cast(schema_field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ServingStoreError(
                f"recommendations column {name} ({column.type}) cannot be read as {schema_field.type}: {error}"
            ) from None
    result = pa.table(columns, schema=schema)
    if rows == 0:
        return result
    other_versions = pc.unique(
        pc.filter(result["model_version"], pc.not_equal(result["model_version"], model_version))
    )
    if len(other_versions):
        raise ServingStoreError(
            f"recommendations column model_version holds {other_versions[0].as_py()!r}, "
            f"but the load is for model_version {model_version!r}"
        )
    source = result["source"]
    bad_source = pc.filter(source, pc.invert(pc.is_in(source, pa.array(SOURCES))))
    if len(bad_source):
        raise ServingStoreError(
            f"recommendations column source must be one of {', '.join(SOURCES)}; found {bad_source[0].as_py()!r}"
        )
    mismatch = pc.filter(source, pc.not_equal(result["explore"], pc.equal(source, "explore")))
    if len(mismatch):
        raise ServingStoreError(
            f"recommendations column explore must be true exactly when source is explore; found a "
            f"{mismatch[0].as_py()!r} row with explore = {mismatch[0].as_py() != 'explore'}"
        )
    bad_user = pc.filter(result["user_id"], pc.less_equal(result["user_id"], 0))
    if len(bad_user):
        raise ServingStoreError(
            f"recommendations column user_id must be positive; found {bad_user[0].as_py()}"
        )
    ranks = result["rank"]
    bad_rank = pc.filter(ranks, pc.or_(pc.less(ranks, 1), pc.greater(ranks, MAX_RANK)))
    if len(bad_rank):
        raise ServingStoreError(
            f"recommendations column rank must be 1..{MAX_RANK}; found {bad_rank[0].as_py()}"
        )
    probability = result["probability"]
    bad_probability = pc.filter(
        probability, pc.invert(pc.and_(pc.greater_equal(probability, 0.0), pc.less_equal(probability, 1.0)))
    )
    if len(bad_probability):
        raise ServingStoreError(
            f"recommendations column probability must be within [0, 1]; found {bad_probability[0].as_py()}"
        )
    return result


UserList = tuple[int, list[tuple[Any, ...]]]


def iter_user_lists(recommendations: RecommendationsInput, model_version: str) -> Iterator[UserList]:
    """Validated rows grouped per user: `(user_id, [(rank, product_id, ..., explore), ...])` by rank.

    Each batch is sorted by (user_id, rank), so one Table may be in any order. Across batches the
    rows of one user may continue into the next batch, but a user whose rows reappear after another
    user's rows in a later batch is an error (sort the input by user_id, as `ORDER BY user_id, rank`).
    """
    import numpy as np

    if not model_version or not isinstance(model_version, str):
        raise ServingStoreError(f"model_version must be a non-empty string, not {model_version!r}")
    finished: set[int] = set()
    pending_user: int | None = None
    pending_rows: list[tuple[Any, ...]] = []

    for raw in _as_tables(recommendations):
        table = _normalise(raw, model_version)
        if table.num_rows == 0:
            continue
        table = table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
        users = table.column("user_id").to_numpy()
        ranks = table.column("rank").to_numpy()
        repeated = np.flatnonzero((users[1:] == users[:-1]) & (ranks[1:] == ranks[:-1]))
        if len(repeated):
            row = repeated[0] + 1
            raise ServingStoreError(f"user_id {users[row]} has rank {ranks[row]} more than once")
        starts = np.concatenate(([0], np.flatnonzero(users[1:] != users[:-1]) + 1)).tolist()
        ends = [*starts[1:], len(users)]
        batch_users = users[starts].tolist()
        items = list(zip(*(table.column(name).to_pylist() for name in ITEM_FIELDS), strict=True))

        first = 0
        if batch_users[0] == pending_user:  # the previous batch's last user continues here
            pending_rows.extend(items[starts[0] : ends[0]])
            first = 1
        if pending_user is not None and first == 0:
            finished.add(pending_user)
            yield pending_user, _ranked(pending_user, pending_rows)
            pending_user = None
        again = finished.intersection(batch_users[first:])
        if again:
            raise ServingStoreError(
                f"rows of user_id {min(again)} appear in non-adjacent batches; sort the recommendations by user_id"
            )
        if first == 1 and len(batch_users) > 1:
            finished.add(pending_user)
            yield pending_user, _ranked(pending_user, pending_rows)
            pending_user = None
        for index in range(first, len(batch_users) - 1):
            finished.add(batch_users[index])
            yield batch_users[index], items[starts[index] : ends[index]]
        if first == 0 or len(batch_users) > 1:
            pending_user, pending_rows = batch_users[-1], items[starts[-1] : ends[-1]]
    if pending_user is not None:
        yield pending_user, _ranked(pending_user, pending_rows)


def _ranked(user_id: int, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A user's rows by rank (already so unless they spanned two batches); a repeated rank is an error."""
    rows.sort(key=lambda row: row[0])
    for before, after in itertools.pairwise(rows):
        if before[0] == after[0]:
            raise ServingStoreError(f"user_id {user_id} has rank {after[0]} more than once")
    return rows


def recommendation_from_item(item: tuple[Any, ...] | list[Any]) -> Recommendation:
    rank, product_id, product_name, aisle, department, probability, explore, source = item
    return Recommendation(
        int(rank),
        int(product_id),
        product_name,
        aisle,
        department,
        float(probability),
        bool(explore),
        source or ("explore" if explore else "model"),  # None: stored before items named their source
    )
