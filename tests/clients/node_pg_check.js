// node-postgres (`pg`) against a running c360: `node node_pg_check.js HOST PORT`.
//
// node-postgres speaks the extended protocol for every parameterized query and names its
// prepared statements; BI tools built on it (and Grafana's and Metabase's checks) list
// tables through information_schema. Exits non-zero if any step fails.

const assert = require("assert");
const { Client } = require("pg");

async function main(host, port) {
  const client = new Client({ host, port, database: "c360", user: "analyst" });
  await client.connect();
  try {
    // What connection checks send.
    const one = await client.query("SELECT 1 AS one");
    // Integer literals are bigint in c360 (node-postgres gives bigint as a string).
    assert.strictEqual(Number(one.rows[0].one), 1);

    const store = await client.query("SELECT name FROM stores WHERE store_id = $1", ["S01"]);
    assert.ok(store.rows[0].name.startsWith("Maison"), store.rows[0].name);

    const profiles = await client.query(
      "SELECT profile_id, first_seen, lifetime_value, order_count, email_opt_in " +
        "FROM profiles ORDER BY profile_id LIMIT 5"
    );
    assert.strictEqual(profiles.rows.length, 5);
    assert.ok(profiles.rows[0].first_seen instanceof Date, profiles.rows[0]);
    assert.strictEqual(typeof profiles.rows[0].email_opt_in, "boolean");

    // A named prepared statement, reused with other parameters.
    const byCity = { name: "by_city", text: "SELECT count(*) AS n FROM stores WHERE city = $1" };
    const paris = await client.query({ ...byCity, values: ["Paris"] });
    const nowhere = await client.query({ ...byCity, values: ["Nowhere"] });
    assert.ok(Number(paris.rows[0].n) >= 1 && Number(nowhere.rows[0].n) === 0);

    // How tools list tables and columns.
    const tables = await client.query(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    );
    const names = tables.rows.map((r) => r.table_name);
    assert.ok(names.includes("profiles") && names.includes("stores"), names.join(","));
    const columns = await client.query(
      "SELECT column_name, data_type FROM information_schema.columns " +
        "WHERE table_name = $1 ORDER BY ordinal_position",
      ["stores"]
    );
    assert.ok(columns.rows.some((r) => r.column_name === "store_id"), JSON.stringify(columns.rows));

    // Errors keep their SQLSTATE, and the connection goes on.
    await assert.rejects(client.query("SELECT * FROM no_such_table"), (e) => e.code === "42P01");
    const two = await client.query("SELECT 2 AS two");
    assert.strictEqual(Number(two.rows[0].two), 2);
  } finally {
    await client.end();
  }
  console.log("node-postgres: ok");
}

main(process.argv[2], Number(process.argv[3])).catch((e) => {
  console.error(e);
  process.exit(1);
});
