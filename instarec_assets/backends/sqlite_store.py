"""The local serving store: one SQLite file in WAL mode, one table per loaded version.

Layout of the file (e.g. `INSTAREC_HOME/serving/recommendations.sqlite`):

- `recommendations_v<N>`: one loaded version, `PRIMARY KEY (user_id, rank) WITHOUT ROWID`, so a
  user's list is one short range of one B-tree (a primary-key lookup); its `explore` INTEGER
  column holds the item's source code, the index in `SOURCES` (0 model, 1 explore, 2 popular): the
  0/1 of the boolean it was before the cold-start tier, so tables loaded earlier read the same;
- `similar_v<N>`: the same version's similar items (when the load was given them),
  `PRIMARY KEY (product_id, rank) WITHOUT ROWID`; filled in the same transaction as
  `recommendations_v<N>`, so the pointer activates both and a cleanup drops both;
- `store_versions`: the version registry, every load (N, version id, the landing batch it was built
  from, model_version, load time, counts, when it was removed, `kind` full or delta, and a
  delta's `base_id`);
- `current_version`: a single row (`id = 1`) naming the table readers use and, as JSON, its
  `chain`: `[[table, version, model_version], ...]` newest first (a delta's table, its base's, ...
  down to a full version; one entry for a full version), plus the `similar_table` the chain reads
  (the newest in the chain loaded with similar items; '' none). A read of a user is one statement
  over the chain's tables (`chain_query`) keeping the newest version's rows; retention keeps
  every base of a kept version.

A load (1) refuses a batch older than the active version's (unless `allow_older`), (2) fills a
new table inside one write transaction (nobody reads it yet), (3) in a second, tiny transaction
points `current_version` at it, provided the pointer still names the version this load saw at its
start (else another load or an `activate` won, and this load is discarded), and (4) drops the
tables of versions beyond the newest `keep_versions` (3 by default; the active one is always
kept), and leftovers of interrupted loads. `activate(version)` moves the pointer to a retained
version in one such tiny transaction: a rollback. A reader runs its pointer lookup and its range query inside one read transaction, and in WAL mode
that transaction reads one snapshot of the file: it sees the old pointer with the old table, or
the new pointer with the new table, even if the old table is dropped meanwhile. A half-filled
table is never visible: it is uncommitted until complete, and the pointer moves only afterwards.

Readers keep one connection per thread (`check_same_thread=False` so `close()` can close them
all), opened read-only (`file:...?mode=ro` plus `PRAGMA query_only`) when the store is built with
`read_only=True`, as the API server does. sqlite3 keeps prepared statements in each connection's
statement cache, keyed by SQL text, so the read path prepares nothing after the first request.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instarec_assets.backends.recommendations import (
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_MAX_DELTA_CHAIN,
    DELTA,
    FULL,
    MAX_RANK,
    SOURCE_CODES,
    SOURCES,
    LoadReport,
    Recommendation,
    RecommendationsInput,
    ServingStoreError,
    UserList,
    UserRecommendations,
    VersionRecord,
    check_batch,
    check_k,
    check_keep_versions,
    check_max_delta_chain,
    check_user_id,
    iter_user_lists,
    new_version_id,
    refuse_delta,
    refuse_older_batch,
    unknown_version,
)
from instarec_assets.backends.similar_items import (
    SimilarItem,
    SimilarItemsInput,
    SimilarProducts,
    iter_product_lists,
)

TABLE_PATTERN = re.compile(r"^recommendations_v(\d+)$")
SIMILAR_TABLE_PATTERN = re.compile(r"^similar_v(\d+)$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL UNIQUE,
    table_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    batch TEXT,
    started_at TEXT NOT NULL,
    loaded_at TEXT,
    users INTEGER,
    rows INTEGER,
    removed_at TEXT,
    kind TEXT,
    base_id INTEGER
);
CREATE TABLE IF NOT EXISTS current_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    table_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    switched_at TEXT NOT NULL,
    chain TEXT,
    similar_table TEXT
);
"""
# Columns added since a file's tables were first created (ALTER TABLE ADD COLUMN by a writer).
_ADDED_COLUMNS = {
    "store_versions": ("batch TEXT", "kind TEXT", "base_id INTEGER"),
    "current_version": ("chain TEXT", "similar_table TEXT"),
}
_ACTIVE_SQL = (
    "SELECT c.version_id, c.version, v.batch FROM current_version c "
    "JOIN store_versions v ON v.id = c.version_id WHERE c.id = 1"
)
_VERSIONS_SQL = (
    "SELECT v.version, v.batch, v.model_version, v.loaded_at, v.users, v.rows, "
    "v.id = (SELECT version_id FROM current_version WHERE id = 1), v.kind, "
    "(SELECT b.version FROM store_versions b WHERE b.id = v.base_id) "
    "FROM store_versions v WHERE v.removed_at IS NULL AND v.loaded_at IS NOT NULL ORDER BY v.id DESC"
)
_CHAIN_STEP_SQL = (
    "SELECT id, version, table_name, model_version, kind, base_id FROM store_versions WHERE id = ?"
)
_COLUMNS = "rank, product_id, product_name, aisle, department, probability, explore"
_SIMILAR_COLUMNS = "rank, similar_product_id, product_name, aisle, department, score"


def similar_table_for(table_name: str) -> str:
    """The similar-items table of the version whose recommendations table is `table_name`."""
    return "similar_v" + table_name.removeprefix("recommendations_v")


@dataclass(frozen=True)
class ChainPointer:
    """What readers need from the pointer row: the active version, its chain's tables and model
    versions (newest first), the similar-items table the chain reads (None: none), and the one
    statement that reads a user's list through the chain."""

    version: str
    versions: tuple[str, ...]
    tables: tuple[str, ...]
    model_versions: tuple[str, ...]
    similar_table: str | None
    query: str


def read_pointer(conn: sqlite3.Connection) -> ChainPointer | None:
    """The pointer row (None before the first load). A pointer written before delta versions has
    no chain (its version alone) and names its own similar-items table."""
    try:
        cursor = conn.execute("SELECT * FROM current_version WHERE id = 1")
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise
    values = cursor.fetchone()
    if values is None:
        return None
    row = dict(zip((column[0] for column in cursor.description), values, strict=True))
    chain = (
        json.loads(row["chain"])
        if row.get("chain")
        else [[row["table_name"], row["version"], row["model_version"]]]
    )
    tables = tuple(table for table, _, _ in chain)
    if not all(TABLE_PATTERN.match(table) for table in tables):
        raise ServingStoreError(f"serving store pointer names tables that are not version tables: {tables}")
    similar = row.get("similar_table")
    if similar is None:
        similar = similar_table_for(row["table_name"])
    elif similar and not SIMILAR_TABLE_PATTERN.match(similar):
        raise ServingStoreError(f"serving store pointer names {similar!r}, not a similar-items table")
    return ChainPointer(
        version=row["version"],
        versions=tuple(version for _, version, _ in chain),
        tables=tables,
        model_versions=tuple(model_version for _, _, model_version in chain),
        similar_table=similar or None,
        query=chain_query(tables),
    )


def chain_query(tables: Sequence[str]) -> str:
    """One statement for a user's list through a chain: each table's rows of the user, tagged
    with the table's place in the chain (0 newest), by (place, rank), at most k (`?2`) rows. The
    caller keeps the rows of the first place (`first_place`): the newest version holding the user.
    Each arm is one primary-key range (the user's rows, at most MAX_RANK), merged by SQLite, so a
    read costs one index seek per version in the chain plus the user's rows in each."""
    if len(tables) == 1:  # a full version: one range, already in rank order
        return f"SELECT 0, {_COLUMNS} FROM {tables[0]} WHERE user_id = ?1 ORDER BY rank LIMIT ?2"
    arms = " UNION ALL ".join(
        f"SELECT {place}, {_COLUMNS} FROM {table} WHERE user_id = ?1" for place, table in enumerate(tables)
    )
    return f"{arms} ORDER BY 1, 2 LIMIT ?2"


def first_place(rows: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
    """The chain place of the newest version in `rows` (from `chain_query`), and its rows without the place."""
    place = rows[0][0]
    return place, [row[1:] for row in rows if row[0] == place]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class SqliteRecommendationStore:
    """`RecommendationStore` over a SQLite file; safe to share between threads."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        busy_timeout_s: float = 30.0,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        max_delta_chain: int = DEFAULT_MAX_DELTA_CHAIN,
    ):
        self.path = Path(path).resolve()
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.keep_versions = check_keep_versions(keep_versions)
        self.max_delta_chain = check_max_delta_chain(max_delta_chain)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect_writer()
            conn.close()

    def __repr__(self) -> str:
        return f"SqliteRecommendationStore({str(self.path)!r}, read_only={self.read_only})"

    # ------------------------------------------------------------ connections
    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            conn.close()
            raise ServingStoreError(f"{self.path}: SQLite refused WAL mode (journal_mode is {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.executescript(_SCHEMA)
        for table, added in _ADDED_COLUMNS.items():  # a file written before these columns existed
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column in added:
                if column.split()[0] not in columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        return conn

    @property
    def subject(self) -> str:
        return f"serving store {self.path}"

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.read_only:
            if not self.path.exists():
                raise ServingStoreError(
                    f"serving store {self.path} does not exist; load recommendations first"
                )
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_s,
            )
        else:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s
            )
        conn.execute("PRAGMA query_only=1")
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every reader connection (of all threads); the store reopens them on the next read."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> SqliteRecommendationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reads
    def top_k(self, user_id: int, k: int = MAX_RANK) -> UserRecommendations | None:
        """The user's list from the newest version of the active chain that holds the user (pointer
        and rows read in one snapshot); its model_version is that version's."""
        check_k(k)
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            pointer = read_pointer(conn)
            if pointer is None:
                return None
            rows = conn.execute(pointer.query, (user_id, k)).fetchall()
        finally:
            conn.execute("COMMIT")
        if not rows:
            return None
        place, rows = first_place(rows)
        return UserRecommendations(
            user_id=user_id,
            model_version=pointer.model_versions[place],
            version=pointer.version,
            items=tuple(
                Recommendation(
                    rank, product_id, name, aisle, department, probability, code == 1, SOURCES[code]
                )
                for rank, product_id, name, aisle, department, probability, code in rows
            ),
        )

    def similar(self, product_id: int, k: int = 10) -> SimilarProducts | None:
        """The product's similar items from the current version (a delta loaded without similar
        items reads its chain's), at most k by rank; None when the version has none for it
        (unknown, not current, too rarely co-bought) or was loaded without."""
        check_k(k)
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            pointer = read_pointer(conn)
            if pointer is None or pointer.similar_table is None:
                return None
            version = pointer.version
            try:
                rows = conn.execute(
                    f"SELECT {_SIMILAR_COLUMNS} FROM {pointer.similar_table} "
                    "WHERE product_id = ? ORDER BY rank LIMIT ?",
                    (product_id, k),
                ).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" in str(error):  # a version loaded without similar items
                    return None
                raise
        finally:
            conn.execute("COMMIT")
        if not rows:
            return None
        return SimilarProducts(
            product_id=product_id, version=version, items=tuple(SimilarItem(*row) for row in rows)
        )

    def current_version(self) -> str | None:
        info = self.current_info()
        return info["version"] if info else None

    def current_info(self) -> dict[str, Any] | None:
        """The current version with its batch, model_version, counts and when it was switched in."""
        conn = self._reader()
        sql = (
            "SELECT c.version, v.batch, c.model_version, c.table_name, c.switched_at, v.users, v.rows "
            "FROM current_version c JOIN store_versions v ON v.id = c.version_id WHERE c.id = 1"
        )
        try:
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.OperationalError as error:
                if "no such column" not in str(error):
                    raise
                row = conn.execute(sql.replace("v.batch", "NULL")).fetchone()  # written before batches
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return None
            raise
        if row is None:
            return None
        keys = ("version", "batch", "model_version", "table_name", "switched_at", "users", "rows")
        return dict(zip(keys, row, strict=True))

    def version_tables(self) -> list[str]:
        """Names of the version tables in the file (the current one, plus any a load is filling)."""
        conn = self._reader()
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sorted((name for name in names if TABLE_PATTERN.match(name)), key=_table_number)

    def versions(self) -> list[VersionRecord]:
        """The retained versions (loaded, not removed), newest load first; the active one flagged."""
        conn = self._reader()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(store_versions)")}
        if not columns:
            return []
        sql = _VERSIONS_SQL
        for column in ("batch", "kind", "base_id"):  # a file no load has written to since they exist
            if column not in columns:
                sql = sql.replace(f"v.{column}", "NULL")
        return [
            VersionRecord(
                version, batch, model_version, loaded_at, users, items, bool(active), kind or FULL, base
            )
            for version, batch, model_version, loaded_at, users, items, active, kind, base in conn.execute(
                sql
            )
        ]

    def chain(self, version_id: str | None = None) -> list[str]:
        """The versions a read of `version_id` (default: the active one) resolves through, newest
        first, ending with a full version; [] when no version is active."""
        conn = self._reader()
        if version_id is None:
            pointer = read_pointer(conn)
            return list(pointer.versions) if pointer else []
        retained = {record.version: record for record in self.versions()}
        if version_id not in retained:
            raise unknown_version(self.subject, version_id, retained)
        chain = [version_id]
        while retained[chain[-1]].kind == DELTA and retained[chain[-1]].base_version in retained:
            chain.append(retained[chain[-1]].base_version)
        return chain

    def activate(self, version_id: str) -> VersionRecord:
        """Point readers at a retained version (a rollback, or forward again) in one transaction."""
        if self.read_only:
            raise ServingStoreError(f"{self.path} was opened read-only; it cannot activate a version")
        conn = self._connect_writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT id, table_name, model_version FROM store_versions "
                    "WHERE version = ? AND removed_at IS NULL AND loaded_at IS NOT NULL",
                    (version_id,),
                ).fetchone()
                exists = (
                    row is not None
                    and conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (row[1],)
                    ).fetchone()
                )
                if not exists:
                    retained = [
                        name
                        for (name,) in conn.execute(
                            "SELECT version FROM store_versions "
                            "WHERE removed_at IS NULL AND loaded_at IS NOT NULL ORDER BY id DESC"
                        )
                    ]
                    raise unknown_version(self.subject, version_id, retained)
                self._point(conn, row[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        return next(record for record in self.versions() if record.version == version_id)

    def forget_user(self, user_id: int) -> dict[str, int]:
        """Delete a user's rows from every version table (retained or not), in one transaction;
        rows removed per version. `secure_delete` zeroes the freed space and a truncating
        checkpoint moves it into the file, so the rows are gone from the bytes on disk too."""
        if self.read_only:
            raise ServingStoreError(f"{self.path} was opened read-only; it cannot forget a user")
        check_user_id(user_id)
        conn = self._connect_writer()
        removed: dict[str, int] = {}
        try:
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                versions = dict(conn.execute("SELECT table_name, version FROM store_versions").fetchall())
                tables = [
                    name
                    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    if TABLE_PATTERN.match(name)
                ]
                for table in sorted(tables, key=_table_number):
                    count = conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,)).rowcount
                    if count:
                        version = versions.get(table, table)
                        removed[version] = count
                        conn.execute(
                            "UPDATE store_versions SET users = users - 1, rows = rows - ? WHERE table_name = ?",
                            (count, table),
                        )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return removed

    def journal_mode(self) -> str:
        return self._reader().execute("PRAGMA journal_mode").fetchone()[0]

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
        active chain), filled in one transaction, switched in by a second; see the module doc."""
        if self.read_only:
            raise ServingStoreError(f"{self.path} was opened read-only; it cannot load")
        batch = check_batch(batch)
        lists = iter_user_lists(recommendations, model_version)
        similar = iter_product_lists(similar_items) if similar_items is not None else None
        version = new_version_id()
        conn = self._connect_writer()
        try:
            previous = conn.execute(_ACTIVE_SQL).fetchone()  # (version_id, version, batch) or None
            base_chain = self._chain_rows(conn, previous[0]) if previous else []
            if delta:
                refuse_delta(self.subject, [row[1] for row in base_chain], self.max_delta_chain)
            refuse_older_batch(self.subject, batch, previous[2] if previous else None, allow_older)
            started = time.perf_counter()
            version_id, table, users, rows, similar_counts = self._fill(
                conn, lists, version, model_version, batch, similar, previous[0] if delta else None
            )
            filled = time.perf_counter()
            self._switch(conn, version_id, version, table, previous)
            switched = time.perf_counter()
            removed = self._drop_beyond(conn, version_id)
            cleaned = time.perf_counter()
        finally:
            conn.close()
        return LoadReport(
            backend=self.backend,
            version=version,
            batch=batch,
            model_version=model_version,
            previous_version=previous[1] if previous else None,
            users=users,
            rows=rows,
            kind=DELTA if delta else FULL,
            base_version=previous[1] if delta else None,
            chain_length=len(base_chain) + 1 if delta else 1,
            removed_versions=tuple(removed),
            removed_items=0,
            write_seconds=filled - started,
            switch_seconds=switched - filled,
            cleanup_seconds=cleaned - switched,
            extra={
                "table": table,
                "path": str(self.path),
                "similar_products": similar_counts[0],
                "similar_rows": similar_counts[1],
            },
        )

    def _fill(
        self,
        conn: sqlite3.Connection,
        lists: Iterator[UserList],
        version: str,
        model_version: str,
        batch: str,
        similar: Iterator[tuple[int, list[tuple[Any, ...]]]] | None = None,
        base_id: int | None = None,
    ) -> tuple[int, str, int, int, tuple[int, int]]:
        """The new version's tables (recommendations and similar items), complete, in one
        transaction: all of it commits or none of it."""
        counts = {"users": 0, "rows": 0, "products": 0, "similar_rows": 0}

        def rows() -> Iterator[tuple[Any, ...]]:
            for user_id, items in lists:
                counts["users"] += 1
                counts["rows"] += len(items)
                for rank, product_id, name, aisle, department, probability, _, source in items:
                    yield (
                        user_id,
                        rank,
                        product_id,
                        name,
                        aisle,
                        department,
                        probability,
                        SOURCE_CODES[source],
                    )

        def similar_rows() -> Iterator[tuple[Any, ...]]:
            for product_id, items in similar or ():
                counts["products"] += 1
                counts["similar_rows"] += len(items)
                for item in items:
                    yield product_id, *item

        conn.execute("BEGIN IMMEDIATE")
        try:
            version_id = conn.execute(
                "INSERT INTO store_versions (version, table_name, model_version, batch, started_at, kind, base_id) "
                "VALUES (?, '', ?, ?, ?, ?, ?)",
                (version, model_version, batch, _now(), FULL if base_id is None else DELTA, base_id),
            ).lastrowid
            table = f"recommendations_v{version_id}"
            conn.execute("UPDATE store_versions SET table_name = ? WHERE id = ?", (table, version_id))
            conn.execute(
                f"CREATE TABLE {table} ("
                "user_id INTEGER NOT NULL, rank INTEGER NOT NULL, product_id INTEGER NOT NULL, "
                "product_name TEXT NOT NULL, aisle TEXT NOT NULL, department TEXT NOT NULL, "
                "probability REAL NOT NULL, explore INTEGER NOT NULL, "
                "PRIMARY KEY (user_id, rank)) WITHOUT ROWID"
            )
            conn.executemany(
                f"INSERT INTO {table} (user_id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows()
            )
            if counts["users"] == 0:
                raise ServingStoreError("no recommendations to load: the input has no rows")
            if similar is not None:
                similar_table = similar_table_for(table)
                conn.execute(
                    f"CREATE TABLE {similar_table} ("
                    "product_id INTEGER NOT NULL, rank INTEGER NOT NULL, similar_product_id INTEGER NOT NULL, "
                    "product_name TEXT NOT NULL, aisle TEXT NOT NULL, department TEXT NOT NULL, "
                    "score REAL NOT NULL, PRIMARY KEY (product_id, rank)) WITHOUT ROWID"
                )
                conn.executemany(
                    f"INSERT INTO {similar_table} (product_id, {_SIMILAR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    similar_rows(),
                )
            conn.execute(
                "UPDATE store_versions SET users = ?, rows = ?, loaded_at = ? WHERE id = ?",
                (counts["users"], counts["rows"], _now(), version_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return (
            version_id,
            table,
            counts["users"],
            counts["rows"],
            (counts["products"], counts["similar_rows"]),
        )

    def _switch(
        self,
        conn: sqlite3.Connection,
        version_id: int,
        version: str,
        table: str,
        previous: tuple[int, str, str | None] | None,
    ):
        """Point readers at the new table: one single-row write in its own transaction, made only
        if the pointer still names the version this load saw at its start (as DynamoDB's
        conditional PutItem); else this load lost a race and its table is dropped."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("SELECT version_id, version FROM current_version WHERE id = 1").fetchone()
            if (current[0] if current else None) != (previous[0] if previous else None):
                conn.execute(f"DROP TABLE {table}")
                conn.execute(f"DROP TABLE IF EXISTS {similar_table_for(table)}")
                conn.execute("UPDATE store_versions SET removed_at = ? WHERE id = ?", (_now(), version_id))
                conn.execute("COMMIT")
                seen = previous[1] if previous else "none"
                raise ServingStoreError(
                    f"another load or activate switched {self.subject} to {current[1]} while version "
                    f"{version} loaded (current version was {seen} when this load started); "
                    f"{version} was discarded"
                )
            self._point(conn, version_id)
            conn.execute("COMMIT")
        except ServingStoreError:
            raise
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _chain_rows(conn: sqlite3.Connection, version_id: int) -> list[tuple[Any, ...]]:
        """Registry rows `(id, version, table_name, model_version, kind, base_id)` of the version
        and its bases, newest first, down to its full version (writer connections: migrated)."""
        rows: list[tuple[Any, ...]] = []
        current: int | None = version_id
        while current is not None and all(row[0] != current for row in rows):
            row = conn.execute(_CHAIN_STEP_SQL, (current,)).fetchone()
            if row is None:
                break
            rows.append(row)
            current = row[5] if row[4] == DELTA else None
        return rows

    def _point(self, conn: sqlite3.Connection, version_id: int):
        """The pointer write itself (inside the caller's transaction): the version, its chain's
        tables and model versions, and the similar-items table of the newest version in the chain
        that was loaded with them (a full version ends the search)."""
        chain = self._chain_rows(conn, version_id)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [row[1] for row in chain if row[2] not in tables]
        if missing or (chain and chain[-1][4] == DELTA):
            raise ServingStoreError(
                f"{self.subject}: version {chain[0][1]} reads through versions that are gone "
                f"({', '.join(missing) or 'its full base'}); load a full version"
            )
        similar = next(
            (similar_table_for(row[2]) for row in chain if similar_table_for(row[2]) in tables), ""
        )
        conn.execute(
            "INSERT INTO current_version "
            "(id, version_id, version, table_name, model_version, switched_at, chain, similar_table) "
            "VALUES (1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET version_id = excluded.version_id, "
            "version = excluded.version, table_name = excluded.table_name, "
            "model_version = excluded.model_version, switched_at = excluded.switched_at, "
            "chain = excluded.chain, similar_table = excluded.similar_table",
            (
                version_id,
                chain[0][1],
                chain[0][2],
                chain[0][3],
                _now(),
                json.dumps(
                    [[table, version, model_version] for _, version, table, model_version, _, _ in chain]
                ),
                similar,
            ),
        )

    def _drop_beyond(self, conn: sqlite3.Connection, version_id: int) -> list[str]:
        """Drop the tables of versions older than `version_id` beyond the newest `keep_versions`
        loaded ones (the active version always stays), and leftovers of interrupted loads."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            kept = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM store_versions WHERE removed_at IS NULL AND loaded_at IS NOT NULL "
                    "ORDER BY id DESC LIMIT ?",
                    (self.keep_versions,),
                )
            }
            active = conn.execute("SELECT version_id FROM current_version WHERE id = 1").fetchone()
            if active:
                kept.add(active[0])
            bases = dict(conn.execute("SELECT id, base_id FROM store_versions WHERE kind = ?", (DELTA,)))
            pending = list(kept)
            while pending:  # a kept delta keeps its base, and the base's base ...
                base = bases.get(pending.pop())
                if base is not None and base not in kept:
                    kept.add(base)
                    pending.append(base)
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            older = [
                name
                for name in tables
                if (TABLE_PATTERN.match(name) or SIMILAR_TABLE_PATTERN.match(name))
                and _table_number(name) < version_id
                and _table_number(name) not in kept
            ]
            dropped = [
                (row[0], row[1])
                for row in conn.execute(
                    "SELECT id, version FROM store_versions WHERE id < ? AND removed_at IS NULL ORDER BY id",
                    (version_id,),
                )
                if row[0] not in kept
            ]
            for name in older:
                conn.execute(f"DROP TABLE {name}")
            conn.executemany(
                "UPDATE store_versions SET removed_at = ? WHERE id = ?",
                [(_now(), number) for number, _ in dropped],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [version for _, version in dropped]


def _table_number(name: str) -> int:
    match = TABLE_PATTERN.match(name) or SIMILAR_TABLE_PATTERN.match(name)
    return int(match.group(1)) if match else -1
