"""Engine, sessions and migrations. One session per request (on ``g``) or per job, explicit.

Planner statistics. PostgreSQL's autovacuum keeps them (and the sync engine analyzes tables it grows within a
run). SQLite has none until someone runs ``ANALYZE``, and without them it guesses at every index; so after a
migration and after every sync that wrote rows, :func:`refresh_statistics` analyzes the indexes never analyzed
on a table that now has rows (a first bulk load) or whose table has grown tenfold since, then runs
``PRAGMA optimize``. ``PRAGMA analysis_limit`` keeps each ``ANALYZE`` to a sample, so a district-sized table
costs milliseconds, not a scan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from flask import Flask

    from plugin.privacy import ErasureList

log = logging.getLogger("trailmark.store")

EXTENSION = "trailmark.db"
MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_ANALYSIS_LIMIT = 1000  # index rows ANALYZE samples per index (SQLite's own advice: a few hundred to 1000)
REANALYZE_GROWTH = 10  # re-analyze a table once it holds this many times the rows its statistics describe
SQLITE_DEFAULT_CACHE_KIB = 2_000  # SQLite's own default page cache
SQLITE_BULK_CACHE_KIB = 65_536  # a bulk write's page cache (the default thrashes on district-sized indexes)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    """Build the Alembic configuration in code (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            refresh_statistics(conn)
    finally:
        engine.dispose()


def refresh_statistics(conn: Connection) -> list[str]:
    """SQLite: analyze the tables whose statistics are missing or outgrown, then ``PRAGMA optimize``.

    Return the tables analyzed. On PostgreSQL do nothing: autovacuum analyzes.
    """
    if conn.dialect.name != "sqlite":
        return []
    run = conn.exec_driver_sql
    stats: dict[str, int] = {}
    if run("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'").first() is not None:
        for index, stat in run("SELECT idx, stat FROM sqlite_stat1 WHERE idx IS NOT NULL"):
            head = str(stat or "").split(" ", 1)[0]
            stats[index] = int(head) if head.isdigit() else 0
    indexes: dict[str, list[str]] = {}
    for table, index in run("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
                            "AND tbl_name NOT LIKE 'sqlite_%' ORDER BY tbl_name, name"):
        indexes.setdefault(table, []).append(index)
    stale = []
    for table, names in indexes.items():
        quoted = conn.dialect.identifier_preparer.quote(table)
        rows = run(f"SELECT max(rowid) FROM {quoted}").scalar()  # a bound on the row count, from the b-tree edge
        if not rows:
            continue
        described = [stats[name] for name in names if name in stats]
        if len(described) < len(names) or rows > REANALYZE_GROWTH * max(min(described), 1):
            stale.append(table)
    run(f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}")  # also bounds what PRAGMA optimize analyzes
    for table in stale:
        run(f"ANALYZE {conn.dialect.identifier_preparer.quote(table)}")
    run("PRAGMA optimize")
    return stale


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@contextlib.contextmanager
def _committed(session: Session) -> Iterator[Session]:
    """Yield ``session``; commit it on success, roll it back on error, close it either way."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class Store:
    """Holds the engine and session factory of one app (or CLI run)."""

    def __init__(self, url: str, *, pool_size: int = 5):
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # the erased people's identifiers, keyed with the app's secret (set by plugin.privacy.init_app); the
        # sync engine consults it before it creates a person
        self.erasures: ErasureList | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with _committed(self.sessions()) as session:
            yield session

    @contextlib.contextmanager
    def bulk_session(self, *, cache_kib: int = SQLITE_BULK_CACHE_KIB) -> Iterator[Session]:
        """A session for one large write, committed on success and rolled back on error.

        On SQLite its connection runs without per-row foreign-key checks and with a larger page cache, and gets
        both back afterwards: the caller vouches for every reference it writes (the sync engine checks the ones
        it did not create itself, once per batch, which costs far less than a lookup per row and index). Reading
        ``PRAGMA foreign_keys`` tells the caller which it got. Other databases get an ordinary session.
        """
        if self.engine.dialect.name != "sqlite":
            with self.session() as session:
                yield session
            return
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            # outside any transaction (SQLite ignores the foreign_keys pragma inside one)
            raw.execute("PRAGMA foreign_keys = OFF")
            raw.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
            try:
                with _committed(self.sessions(bind=conn)) as session:
                    yield session
            finally:
                try:
                    if conn.in_transaction():
                        conn.rollback()
                    raw.execute("PRAGMA foreign_keys = ON")
                    raw.execute(f"PRAGMA cache_size = -{SQLITE_DEFAULT_CACHE_KIB}")
                except Exception:  # never hand the pool a connection that skips foreign-key checks
                    conn.invalidate()
                    log.warning("store.bulk_restore_failed", exc_info=True)

    def refresh_statistics(self) -> list[str]:
        """Refresh SQLite's planner statistics after a bulk write, in a short transaction of its own; never raises."""
        if self.engine.dialect.name != "sqlite":
            return []
        try:
            with self.engine.begin() as conn:
                analyzed = refresh_statistics(conn)
        except Exception:  # statistics only help the planner; a busy database can have them next time
            log.warning("store.statistics_failed", exc_info=True)
            return []
        if analyzed:
            log.debug("store.analyzed tables=%s", ",".join(analyzed))
        return analyzed

    def dispose(self) -> None:
        self.engine.dispose()


def init_app(app: Flask) -> Store:
    from flask import g

    store = Store(app.config["DATABASE_URL"], pool_size=app.config.get("DB_POOL_SIZE", 5))
    app.extensions[EXTENSION] = store

    @app.teardown_appcontext
    def _close_session(exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            if exc is None:
                session.commit()
            else:
                session.rollback()
            session.close()

    return store


def get_store(app: Flask | None = None) -> Store:
    from flask import current_app

    return (app or current_app).extensions[EXTENSION]


def discard_session() -> None:
    """Roll back and drop the request's session (after an error the request handled itself)."""
    from flask import g

    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()


def get_session() -> Session:
    """The request's session (committed at teardown unless the request failed)."""
    from flask import g

    if "db_session" not in g:
        g.db_session = get_store().sessions()
    return g.db_session
