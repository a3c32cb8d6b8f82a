// pgjdbc (what DBeaver and Metabase use) against a running c360:
// `java -cp /usr/share/java/postgresql.jar JdbcCheck.java HOST PORT`.
// Exits non-zero, with the failing step on stderr, if a catalog or protocol path fails.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;

public class JdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/c360?user=analyst";
        try (Connection conn = DriverManager.getConnection(url)) {
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), meta.getDatabaseProductName());

            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME") + ":" + rs.getString("TABLE_TYPE"));
                }
            }
            check(tables.contains("stores:TABLE"), "getTables: " + tables);
            check(tables.contains("profiles:TABLE"), "getTables: " + tables);
            check(tables.contains("web_orders:VIEW"), "getTables: " + tables);

            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "public", "stores", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            check(columns.contains("store_id:text"), "getColumns: " + columns);
            check(columns.size() == 7, "getColumns: " + columns);

            try (ResultSet rs = meta.getSchemas()) {
                boolean publicSchema = false;
                while (rs.next()) {
                    publicSchema |= rs.getString("TABLE_SCHEM").equals("public");
                }
                check(publicSchema, "getSchemas has no public");
            }

            // A prepared statement, reused past pgjdbc's prepareThreshold (5), when it
            // switches to a named server-side statement.
            try (PreparedStatement ps =
                    conn.prepareStatement("SELECT name, latitude FROM stores WHERE store_id = ?")) {
                for (int i = 1; i <= 8; i++) {
                    ps.setString(1, String.format("S%02d", i));
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "no row for store " + i);
                        check(rs.getString(1).startsWith("Maison"), rs.getString(1));
                        rs.getDouble(2);
                        check(!rs.next(), "two rows for store " + i);
                    }
                }
            }
            try (PreparedStatement ps =
                    conn.prepareStatement("SELECT count(*) FROM profiles WHERE order_count >= ?")) {
                ps.setLong(1, 0);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next() && rs.getLong(1) > 1000, "profiles count");
                }
            }

            try (Statement st = conn.createStatement()) {
                try {
                    st.executeQuery("SELECT * FROM no_such_table");
                    check(false, "no error for a missing table");
                } catch (SQLException e) {
                    check("42P01".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState());
                }
                try (ResultSet rs = st.executeQuery("SELECT count(*) FROM stores")) {
                    check(rs.next() && rs.getLong(1) == 40, "stores count after an error");
                }
            }
        }
        System.out.println("pgjdbc: ok");
    }
}
