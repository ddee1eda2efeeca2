// pgjdbc side of pgwarden's driver matrix (tests/e2e/test_driver_matrix.py).
//
//   java -cp CLASSES:postgresql.jar DriverScenario SCENARIO JDBC_URL APPLICATION_NAME
//
// Runs one scenario against JDBC_URL (PostgreSQL itself or pgwarden in front of it) and prints
// one JSON object with what the driver saw; the Python test asserts on it. Exit code 0 unless
// the scenario could not run at all (then the stack trace is on stderr).
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CompletableFuture;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;

public final class DriverScenario {
    private final String url;
    private final String app;
    private final Map<String, Object> out = new LinkedHashMap<>();

    private DriverScenario(String url, String app) {
        this.url = url;
        this.app = app;
    }

    public static void main(String[] args) throws Exception {
        DriverScenario s = new DriverScenario(args[1], args[2]);
        switch (args[0]) {
            case "pid" -> s.pid();
            case "whoami" -> s.whoami();
            case "prepared" -> s.prepared();
            case "batch" -> s.batch();
            case "transaction" -> s.transaction();
            case "notify" -> s.notifyOwn();
            case "cancel" -> s.cancel();
            case "cancel_then_next" -> s.cancelThenNext();
            default -> throw new IllegalArgumentException("unknown scenario " + args[0]);
        }
        System.out.println(json(s.out));
    }

    private Connection connect() throws SQLException {
        Properties props = new Properties();
        props.setProperty("ApplicationName", app);
        props.setProperty("connectTimeout", "5");
        return DriverManager.getConnection(url, props);
    }

    private static Object one(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getObject(1);
        }
    }

    private void pid() throws SQLException {
        try (Connection conn = connect()) {
            out.put("driver_pid", conn.unwrap(PGConnection.class).getBackendPID());
            out.put("server_pid", one(conn, "select pg_backend_pid()"));
        }
    }

    // Who the session is and whether the server's own leg is encrypted (pg_stat_ssl).
    private void whoami() throws SQLException {
        try (Connection conn = connect()) {
            out.put("user", one(conn, "select current_user::text"));
            out.put("server_ssl", one(conn, "select ssl from pg_stat_ssl where pid = pg_backend_pid()"));
            out.put("driver_pid", conn.unwrap(PGConnection.class).getBackendPID());
            out.put("server_pid", one(conn, "select pg_backend_pid()"));
        }
    }

    private void prepared() throws SQLException {
        try (Connection conn = connect();
                PreparedStatement ps = conn.prepareStatement("select ?::int * 2")) {
            ps.unwrap(PGStatement.class).setPrepareThreshold(1); // named server-side at once
            List<Object> values = new ArrayList<>();
            for (int i = 1; i <= 3; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    values.add(rs.getInt(1));
                }
            }
            out.put("values", values);
            out.put("server_prepared", one(conn,
                    "select count(*)::int from pg_prepared_statements where not from_sql"));
        }
    }

    private void batch() throws SQLException {
        try (Connection conn = connect(); Statement st = conn.createStatement()) {
            st.execute("create temp table batch_t(id int primary key, v text)");
            List<Object> counts = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement("insert into batch_t values (?, ?)")) {
                String[] letters = {"a", "b", "c"};
                for (int i = 0; i < letters.length; i++) {
                    ps.setInt(1, i + 1);
                    ps.setString(2, letters[i]);
                    ps.addBatch();
                }
                for (int c : ps.executeBatch()) {
                    counts.add(c);
                }
            }
            out.put("update_counts", counts);
            out.put("rows", one(conn, "select string_agg(id || v, ',' order by id) from batch_t"));
        }
    }

    private void transaction() throws SQLException {
        try (Connection conn = connect(); Statement st = conn.createStatement()) {
            st.execute("create temp table tx_t(id int primary key)");
            conn.setAutoCommit(false);
            st.execute("insert into tx_t values (1)");
            java.sql.Savepoint sp = conn.setSavepoint("s");
            try {
                st.execute("insert into tx_t values (1)");
                out.put("duplicate", "no error");
            } catch (SQLException e) {
                out.put("duplicate", e.getSQLState());
            }
            conn.rollback(sp);
            st.execute("insert into tx_t values (2)");
            conn.commit();
            st.execute("insert into tx_t values (3)");
            conn.rollback();
            conn.setAutoCommit(true);
            out.put("rows", one(conn, "select string_agg(id::text, ',' order by id) from tx_t"));
        }
    }

    private void notifyOwn() throws SQLException {
        try (Connection conn = connect(); Statement st = conn.createStatement()) {
            String channel = "chan_" + app;
            st.execute("listen " + channel);
            st.execute("notify " + channel + ", 'hello'");
            PGNotification[] got = conn.unwrap(PGConnection.class).getNotifications(5000);
            List<Object> seen = new ArrayList<>();
            for (PGNotification n : got == null ? new PGNotification[0] : got) {
                Map<String, Object> one = new LinkedHashMap<>();
                one.put("channel", n.getName().equals(channel) ? "<ours>" : n.getName());
                one.put("payload", n.getParameter());
                one.put("pid", n.getPID());
                seen.add(one);
            }
            out.put("notifications", seen);
            out.put("driver_pid", conn.unwrap(PGConnection.class).getBackendPID());
            out.put("server_pid", one(conn, "select pg_backend_pid()"));
        }
    }

    /** Waits (polling the server, never sleeping blind) until our pg_sleep is running. */
    private void awaitRunning(Connection watcher) throws SQLException, InterruptedException {
        long deadline = System.nanoTime() + 5_000_000_000L;
        try (PreparedStatement ps = watcher.prepareStatement(
                "select count(*) from pg_stat_activity where application_name = ?"
                        + " and state = 'active' and query like 'select pg_sleep%'")) {
            ps.setString(1, app);
            while (System.nanoTime() < deadline) {
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    if (rs.getInt(1) > 0) {
                        return;
                    }
                }
                Thread.sleep(10); // polling interval
            }
        }
        throw new IllegalStateException("the statement to cancel never started");
    }

    private static CompletableFuture<String> runAsync(Statement st, String sql) {
        return CompletableFuture.supplyAsync(() -> {
            try {
                st.execute(sql);
                return "ok";
            } catch (SQLException e) {
                return e.getSQLState();
            }
        });
    }

    private Object next(Statement st, String sql) {
        try (ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(2);
        } catch (SQLException e) {
            return e.getSQLState();
        }
    }

    private void cancel() throws Exception {
        try (Connection conn = connect(); Connection watcher = connect();
                Statement st = conn.createStatement()) {
            CompletableFuture<String> first = runAsync(st, "select pg_sleep(30)");
            awaitRunning(watcher);
            long started = System.nanoTime();
            st.cancel();
            out.put("first", first.get());
            out.put("seconds", (System.nanoTime() - started) / 1e9);
            out.put("next", next(st, "select 1, 'next'"));
        }
    }

    private void cancelThenNext() throws Exception {
        try (Connection conn = connect(); Connection watcher = connect();
                Statement st = conn.createStatement()) {
            CompletableFuture<String> first = runAsync(st, "select pg_sleep(0.3)");
            awaitRunning(watcher);
            st.cancel(); // returns once the cancel connection is closed: "the server acted"
            out.put("first", first.get());
            out.put("next", next(st, "select pg_sleep(1.5), 'next'"));
        }
    }

    private static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof Number || value instanceof Boolean) {
            return value.toString();
        }
        if (value instanceof Map<?, ?> map) {
            StringBuilder sb = new StringBuilder("{");
            for (Map.Entry<?, ?> e : map.entrySet()) {
                if (sb.length() > 1) {
                    sb.append(',');
                }
                sb.append(json(e.getKey().toString())).append(':').append(json(e.getValue()));
            }
            return sb.append('}').toString();
        }
        if (value instanceof List<?> list) {
            StringBuilder sb = new StringBuilder("[");
            for (Object item : list) {
                if (sb.length() > 1) {
                    sb.append(',');
                }
                sb.append(json(item));
            }
            return sb.append(']').toString();
        }
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : value.toString().toCharArray()) {
            if (ch == '"' || ch == '\\') {
                sb.append('\\').append(ch);
            } else if (ch < 0x20) {
                sb.append(String.format("\\u%04x", (int) ch));
            } else {
                sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }
}
