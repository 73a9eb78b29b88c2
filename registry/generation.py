"""The data generation: a counter that moves with every committed write, the same in every worker.

It is one row, `mim_generation`, moved in the writing transaction itself, so a reader sees the
data and the generation of the same commits. SQLite: triggers on every table an answer reads bump
it per row (SQLite writers take turns anyway). PostgreSQL: a statement trigger on those tables
notes, once per transaction, that the transaction wrote (a row in `mim_generation_pending`),
and a deferred constraint trigger on that row bumps the counter at commit: concurrent writers
wait for the counter's row lock only while they commit, never for each other's whole work.

Read the generation before the data it stands for: an answer is then at least as new as its tag.
"""

from __future__ import annotations

from registry import db

# The tables whose rows answers are made of (kpi_rollup follows kpi_observation).
WATCHED = (
    "kpi_definition",
    "kpi_revision",
    "incident",
    "alert",
    "timeline_event",
    "milestone",
    "survey_response",
    "kpi_observation",
    "kpi_recompute",
)
EVENTS = ("INSERT", "UPDATE", "DELETE")

SQLITE_TABLE = (
    "CREATE TABLE mim_generation (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "value INTEGER NOT NULL DEFAULT 0)"
)


def sqlite_statements() -> list[str]:
    """Return the statements creating SQLite's counter and the triggers that bump it."""
    return [
        SQLITE_TABLE,
        "INSERT INTO mim_generation (id, value) VALUES (1, 0)",
        *(
            f"CREATE TRIGGER mim_generation_{table}_{event.lower()} AFTER {event} ON {table} "
            "BEGIN UPDATE mim_generation SET value = value + 1 WHERE id = 1; END"
            for table in WATCHED
            for event in EVENTS
        ),
    ]


POSTGRES = [
    "CREATE TABLE mim_generation (id integer PRIMARY KEY CHECK (id = 1), "
    "value bigint NOT NULL DEFAULT 0)",
    "INSERT INTO mim_generation (id, value) VALUES (1, 0)",
    "CREATE UNLOGGED TABLE mim_generation_pending (xact bigint PRIMARY KEY)",
    "CREATE FUNCTION mim_generation_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF current_setting('mim.generation_touched', true) IS DISTINCT FROM 'yes' THEN "
    "INSERT INTO mim_generation_pending (xact) VALUES (txid_current()) ON CONFLICT DO NOTHING; "
    "PERFORM set_config('mim.generation_touched', 'yes', true); "
    "END IF; RETURN NULL; END $$",
    "CREATE FUNCTION mim_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "UPDATE mim_generation SET value = value + 1 WHERE id = 1; "
    "DELETE FROM mim_generation_pending WHERE xact = NEW.xact; RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER mim_generation_bump AFTER INSERT ON mim_generation_pending "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mim_generation_bump()",
    *(
        f"CREATE TRIGGER mim_generation_touch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION mim_generation_touch()"
        for table in WATCHED
    ),
]
POSTGRES_DROPS = [
    *(f"DROP TRIGGER IF EXISTS mim_generation_touch ON {table}" for table in WATCHED),
    "DROP TABLE IF EXISTS mim_generation_pending",
    "DROP TABLE IF EXISTS mim_generation",
    "DROP FUNCTION IF EXISTS mim_generation_touch, mim_generation_bump",
]


def sqlite_drops() -> list[str]:
    return [
        *(
            f"DROP TRIGGER IF EXISTS mim_generation_{table}_{event.lower()}"
            for table in WATCHED
            for event in EVENTS
        ),
        "DROP TABLE IF EXISTS mim_generation",
    ]


async def current() -> int:
    """Return the generation of the data a read starting now sees."""
    rows = await db.fetch("SELECT value FROM mim_generation WHERE id = 1", [])
    return int(rows[0]["value"])
