"""psycopg 3 and SQLAlchemy reflection against a running c360: `python3 psycopg_check.py HOST PORT`.

Exits non-zero, with the failing step on stderr, if a query or catalog path fails.
"""

import sys

import psycopg
import sqlalchemy


def main(host: str, port: str) -> None:
    dsn = f"host={host} port={port} dbname=c360 user=analyst"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Server-side parameters (extended protocol), text and binary results.
        row = conn.execute("SELECT name FROM stores WHERE store_id = %s", ["S01"]).fetchone()
        assert row is not None and row[0].startswith("Maison"), row
        row = conn.execute(
            "SELECT count(*) FROM profiles WHERE order_count >= %s", [0], binary=True
        ).fetchone()
        assert row[0] > 1000, row
        cur = conn.execute("SELECT profile_id, lifetime_value, last_seen FROM profiles LIMIT 3")
        names = [column.name for column in cur.description]
        assert names == ["profile_id", "lifetime_value", "last_seen"], names
        assert len(cur.fetchall()) == 3
        # COPY TO STDOUT, as psycopg streams it.
        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT store_id FROM stores ORDER BY 1 LIMIT 3) TO STDOUT") as copy:
                copied = [row[0] for row in copy.rows()]
        assert copied == ["S01", "S02", "S03"], copied
        # An error, then the connection is still usable.
        try:
            conn.execute("SELECT * FROM no_such_table")
            raise AssertionError("no error for a missing table")
        except psycopg.errors.UndefinedTable:
            pass
        assert conn.execute("SELECT 1").fetchone()[0] == 1

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://analyst@{host}:{port}/c360")
    inspector = sqlalchemy.inspect(engine)
    tables = inspector.get_table_names()
    # profiles is a materialized view: a table to clients; events unions history and live data.
    for table in ("stores", "profiles", "crm_contacts"):
        assert table in tables, tables
    views = inspector.get_view_names()
    for view in ("events", "web_orders"):
        assert view in views, views
    columns = {column["name"]: column for column in inspector.get_columns("stores")}
    assert "store_id" in columns and "name" in columns, columns
    columns = {column["name"]: column for column in inspector.get_columns("profiles")}
    assert "lifetime_value" in columns, columns
    with engine.connect() as conn:
        stores = conn.execute(
            sqlalchemy.text("SELECT count(*) FROM stores WHERE city = :city"), {"city": "Paris"}
        ).scalar_one()
        assert stores >= 1, stores
    print("psycopg and SQLAlchemy: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
