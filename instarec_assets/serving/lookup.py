"""How the API reads a user's list: `lookup(user_id, k) -> (model_version, rows) | None`.

`rows` are tuples `(rank, product_id, product_name, aisle, department, probability, source)` by
rank (ints, strings, a float, and the source code: the index in `SOURCES`, 0 model, 1 explore,
2 popular; a bool reads as 0/1), the shape the JSON renderer wants, so no per-item objects are
built on the request path. SQLite keeps the code in its `explore` column, so it is read as is.

- `SqliteLookup` reads the local store's file (layout documented in `backends/sqlite_store.py`:
  a one-row `current_version` pointer naming the table `recommendations_v<N>` of the version
  readers use, `PRIMARY KEY (user_id, rank)`) with ONE statement per request, the range query on
  the current table. The pointer is cached for at most `pointer_ttl_s` (1 s), like the DynamoDB
  store's 5 s pointer cache. One statement reads one WAL snapshot of one complete table, so an
  answer never mixes versions and never sees a half-filled table (a table is named by the
  pointer only once its load committed). The store retains its newest versions, so after a load
  or an `activate` (rollback) the previous table usually still exists and is served until the
  cached pointer expires. A table the loader dropped (beyond those it retains) fails the next
  query with "no such table", which is retried once on the re-read pointer; a miss (an unknown
  user, or one new in the next version) re-reads the pointer too. So a newly switched version is
  served at the latest `pointer_ttl_s` after its switch. When the active version is a delta, the
  statement reads the user's rows from every table of its chain (`sqlite_store.chain_query`, one
  index seek per version) and keeps the newest version's.
  `SqliteRecommendationStore.top_k` reads the pointer on every call (four statements); this
  keeps the hot path at one statement, on a connection reading the file through a memory map
  (`bench/bench_serving.py` compares the whole endpoint with a bare one-lookup server).
- `StoreLookup` wraps any `RecommendationStore` (DynamoDB, test doubles) through `top_k`.

`similar(product_id, k) -> (version, rows) | None` reads a product's similar items from the same
version (`similar_v<N>` beside `recommendations_v<N>`; DynamoDB's `similar()`), rows
`(rank, product_id, product_name, aisle, department, score)` by rank, never the product itself.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from instarec_assets.backends.recommendations import SOURCE_CODES
from instarec_assets.backends.sqlite_store import first_place, read_pointer

_SIMILAR_ROW = "rank, similar_product_id, product_name, aisle, department, score"
MMAP_SIZE = 1 << 30  # bytes of the store file readers map (SQLite caps it at its compile-time maximum)

Rows = list[tuple[Any, ...]]


class Lookup(Protocol):
    backend: str

    def lookup(self, user_id: int, k: int) -> tuple[str, Rows] | None: ...

    def similar(self, product_id: int, k: int) -> tuple[str, Rows] | None: ...

    def close(self) -> None: ...


def _store_error(message: str) -> Exception:
    from instarec_assets.backends.recommendations import ServingStoreError

    return ServingStoreError(message)


class SqliteLookup:
    backend = "sqlite"

    def __init__(self, path: str | Path, pointer_ttl_s: float = 1.0, busy_timeout_s: float = 5.0):
        self.path = Path(path).resolve()
        self.pointer_ttl_s = pointer_ttl_s
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        # (read at, chain tables, their model versions, the chain's query); tables None: nothing loaded
        self._pointer: tuple[float, tuple[str, ...] | None, tuple[str, ...], str] | None = None

    def __repr__(self) -> str:
        return f"SqliteLookup({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if not self.path.exists():
            raise _store_error(f"serving store {self.path} does not exist; load recommendations first")
        conn = sqlite3.connect(
            f"{self.path.as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=self.busy_timeout_s,
        )
        conn.execute("PRAGMA query_only=1")
        # Read the file through a memory map: a lookup's B-tree pages come from the OS page cache
        # without a pread() each (WAL frames are still read from the WAL). The loader never
        # truncates the file (no VACUUM, no auto_vacuum), so the map stays valid.
        conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _read_pointer(
        self, conn: sqlite3.Connection
    ) -> tuple[float, tuple[str, ...] | None, tuple[str, ...], str]:
        found = read_pointer(conn)
        now = time.monotonic()
        if found is None:
            pointer: tuple[float, tuple[str, ...] | None, tuple[str, ...], str] = (now, None, (), "")
        else:
            pointer = (now, found.tables, found.model_versions, found.query)
        self._pointer = pointer
        return pointer

    def lookup(self, user_id: int, k: int) -> tuple[str, Rows] | None:
        conn = getattr(self._local, "conn", None) or self._connection()
        pointer = self._pointer
        if pointer is None or time.monotonic() - pointer[0] >= self.pointer_ttl_s:
            pointer = self._read_pointer(conn)
        if pointer[1] is not None:
            try:
                rows = conn.execute(pointer[3], (user_id, k)).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):
                    raise
                rows = []
            if rows:
                place, rows = first_place(rows)
                return pointer[2][place], rows
        # a miss: re-read the pointer, and if it names another chain, ask that one
        fresh = self._read_pointer(conn)
        if fresh[1] is None or fresh[1] == pointer[1]:
            return None
        rows = conn.execute(fresh[3], (user_id, k)).fetchall()
        if not rows:
            return None
        place, rows = first_place(rows)
        return fresh[2][place], rows

    def similar(self, product_id: int, k: int) -> tuple[str, Rows] | None:
        """The product's similar items in the current version (or the chain's, for a delta loaded
        without them): pointer and list read in one transaction (one snapshot)."""
        conn = getattr(self._local, "conn", None) or self._connection()
        conn.execute("BEGIN")
        try:
            pointer = read_pointer(conn)
            if pointer is None or pointer.similar_table is None:
                return None
            try:
                rows = conn.execute(
                    f"SELECT {_SIMILAR_ROW} FROM {pointer.similar_table} WHERE product_id = ? AND similar_product_id <> ? "
                    "ORDER BY rank LIMIT ?",
                    (product_id, product_id, k),
                ).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):  # a version loaded without similar items
                    raise
                return None
        finally:
            conn.execute("COMMIT")
        return (pointer.version, rows) if rows else None

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


class StoreLookup:
    """Any store with `top_k(user_id, k) -> UserRecommendations | None`."""

    def __init__(self, store: Any):
        self.store = store
        self.backend = getattr(store, "backend", "store")

    def __repr__(self) -> str:
        return f"StoreLookup({self.store!r})"

    def lookup(self, user_id: int, k: int) -> tuple[str, Rows] | None:
        result = self.store.top_k(user_id, k)
        if result is None:
            return None
        rows = [
            (
                item.rank,
                item.product_id,
                item.product_name,
                item.aisle,
                item.department,
                item.probability,
                SOURCE_CODES[item.source],
            )
            for item in result.items
        ]
        return result.model_version, rows

    def similar(self, product_id: int, k: int) -> tuple[str, Rows] | None:
        read = getattr(self.store, "similar", None)
        result = read(product_id, k) if callable(read) else None
        if result is None:
            return None
        rows = [
            (item.rank, item.product_id, item.product_name, item.aisle, item.department, item.score)
            for item in result.items
            if item.product_id != product_id
        ]
        return (result.version, rows) if rows else None

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            close()


def lookup_for(store: Any) -> Lookup:
    """The fast SQLite reader for a SQLite serving store (by its file), else the store's own top_k."""
    if isinstance(store, SqliteLookup | StoreLookup):
        return store
    path = getattr(store, "path", None)
    if getattr(store, "backend", None) == "sqlite" and isinstance(path, Path):
        return SqliteLookup(path)
    return StoreLookup(store)
