"""asyncpg against a running c360: `python3 asyncpg_check.py HOST PORT`.

asyncpg prepares every statement and introspects the types it does not know, so this
exercises the extended protocol and pg_type. Exits non-zero if any step fails.
"""

import asyncio
import sys

import asyncpg


async def main(host: str, port: int) -> None:
    conn = await asyncpg.connect(host=host, port=port, database="c360", user="analyst")
    try:
        name = await conn.fetchval("SELECT name FROM stores WHERE store_id = $1", "S01")
        assert name.startswith("Maison"), name
        rows = await conn.fetch(
            "SELECT profile_id, first_seen, lifetime_value, order_count, email_opt_in "
            "FROM profiles ORDER BY profile_id LIMIT 5"
        )
        assert len(rows) == 5, rows
        assert isinstance(rows[0]["order_count"], int), rows[0]
        # A prepared statement reused with different parameters.
        statement = await conn.prepare("SELECT count(*) FROM stores WHERE city = $1")
        paris = await statement.fetchval("Paris")
        nowhere = await statement.fetchval("Nowhere")
        assert paris >= 1 and nowhere == 0, (paris, nowhere)
        # Errors keep their SQLSTATE, and the connection goes on.
        try:
            await conn.fetch("SELECT * FROM no_such_table")
            raise AssertionError("no error for a missing table")
        except asyncpg.exceptions.UndefinedTableError:
            pass
        assert await conn.fetchval("SELECT 2") == 2
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM stores") == 40
    finally:
        await conn.close()
    print("asyncpg: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
