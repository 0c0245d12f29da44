package io.haorch.neo4j;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.SettingValueParsers;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;

/**
 * Runs Neo4j Community embedded for haorch, serving Bolt on one address (127.0.0.1 by default), with authentication.
 *
 * <pre>
 * java -Xms128m -Xmx512m -XX:+UseSerialGC --add-opens=java.base/java.nio=ALL-UNNAMED \
 *      -cp 'target/haorch-neo4j.jar:target/lib/*' io.haorch.neo4j.Launcher \
 *      --home DIR --bolt-port PORT --password-file FILE [--bolt-address 127.0.0.1] [--pagecache 128m]
 *      [--tx-memory 256m]
 * </pre>
 *
 * <p>Data goes to {@code DIR/data}, Neo4j's logs to {@code DIR/logs}. On every start the password of user
 * {@code neo4j} is set to the file's content (trailing newlines stripped; at least 8 characters) with no change
 * required. Once the {@code neo4j} database is available and Bolt accepts connections, exactly one line
 * {@code HAORCH-NEO4J READY bolt://ADDRESS:PORT} is printed to stdout. SIGTERM shuts the DBMS down cleanly.
 * Bad arguments exit 2; a failure to start exits 1. HTTP, server-side routing and usage reporting are off.
 */
public final class Launcher {
    private static final String USAGE = "usage: Launcher --home DIR --bolt-port PORT --password-file FILE"
            + " [--bolt-address ADDRESS] [--pagecache SIZE] [--tx-memory SIZE]";
    private static final long START_TIMEOUT_MS = 120_000;

    private Launcher() {}

    public static void main(String[] args) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i += 2) {
            String key = args[i];
            if (!key.matches("--(home|bolt-port|bolt-address|password-file|pagecache|tx-memory)")) {
                fail("unknown argument '" + key + "'; " + USAGE);
            }
            if (i + 1 >= args.length) {
                fail("missing value for " + key + "; " + USAGE);
            }
            opts.put(key.substring(2), args[i + 1]);
        }
        for (String required : new String[] {"home", "bolt-port", "password-file"}) {
            if (!opts.containsKey(required)) {
                fail("missing --" + required + "; " + USAGE);
            }
        }
        int port = 0;
        try {
            port = Integer.parseInt(opts.get("bolt-port"));
        } catch (NumberFormatException e) {
            // reported below
        }
        if (port < 1 || port > 65535) {
            fail("--bolt-port must be an integer in 1..65535, got '" + opts.get("bolt-port") + "'");
        }
        String password = null;
        try {
            password = Files.readString(Path.of(opts.get("password-file")), StandardCharsets.UTF_8)
                    .replaceAll("[\r\n]+$", "");
        } catch (IOException e) {
            fail("cannot read --password-file " + opts.get("password-file") + ": " + e);
        }
        if (password.length() < 8) {
            fail("password in " + opts.get("password-file") + " must have at least 8 characters");
        }
        Long pagecache = size(opts.getOrDefault("pagecache", "128m"), "--pagecache");
        Long txMemory = opts.containsKey("tx-memory") ? size(opts.get("tx-memory"), "--tx-memory") : null;
        Path home = Path.of(opts.get("home")).toAbsolutePath();
        try {
            Files.createDirectories(home);
        } catch (IOException e) {
            fail("cannot create --home " + home + ": " + e);
        }

        String address = opts.getOrDefault("bolt-address", "127.0.0.1");
        SocketAddress bolt = new SocketAddress(address, port);
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home)
                .setConfig(GraphDatabaseSettings.default_listen_address, new SocketAddress(address))
                .setConfig(GraphDatabaseSettings.default_advertised_address, new SocketAddress(address))
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, bolt)
                .setConfig(BoltConnector.advertised_address, bolt)
                .setConfig(HttpConnector.enabled, false)
                .setConfig(HttpsConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.routing_enabled, false)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.logs_directory, home.resolve("logs"))
                .setConfig(GraphDatabaseSettings.pagecache_memory, pagecache)
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, 16L * 1024 * 1024)
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "2 files")
                // Logs are pruned only at a checkpoint, by default every 15 min: under retention's deletes and a
                // steady load (bench soak) that let them reach GBs in between. Every minute keeps them small.
                .setConfig(GraphDatabaseSettings.check_point_interval_time, Duration.ofMinutes(1))
                // Bolt's netty shutdown otherwise idles 2 x 5 s quiet periods, making SIGTERM take ~11 s.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(2));
        if (txMemory != null) {
            builder.setConfig(GraphDatabaseSettings.memory_transaction_global_max_size, txMemory);
        }

        DatabaseManagementService dbms;
        try {
            dbms = builder.build();
        } catch (RuntimeException e) {
            System.err.println("haorch-neo4j: failed to start Neo4j: " + rootMessage(e));
            System.exit(1);
            return;
        }
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown, "haorch-neo4j-shutdown"));
        try {
            setPassword(dbms, password);
            if (!dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).isAvailable(START_TIMEOUT_MS)) {
                throw new IllegalStateException("database 'neo4j' not available after " + START_TIMEOUT_MS + " ms");
            }
            awaitPort(address, port);
        } catch (RuntimeException e) {
            System.err.println("haorch-neo4j: failed to start Neo4j: " + rootMessage(e));
            System.exit(1);
        }
        System.out.println("HAORCH-NEO4J READY bolt://" + address + ":" + port);
        System.out.flush();
        // Neo4j's own threads keep the JVM alive; SIGTERM runs the shutdown hook.
    }

    /** Sets the neo4j user's password; repeating the current password is not an error. */
    private static void setPassword(DatabaseManagementService dbms, String password) {
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $pw CHANGE NOT REQUIRED", Map.of("pw", password));
        } catch (RuntimeException e) {
            String msg = String.valueOf(rootMessage(e));
            if (!msg.contains("Old password and new password cannot be the same")) {
                throw e;
            }
        }
    }

    /** Waits until something accepts TCP connections on address:port. */
    private static void awaitPort(String address, int port) {
        long deadline = System.currentTimeMillis() + START_TIMEOUT_MS;
        while (true) {
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress(address, port), 1000);
                return;
            } catch (IOException e) {
                if (System.currentTimeMillis() > deadline) {
                    throw new IllegalStateException("Bolt not listening on " + address + ":" + port, e);
                }
                try {
                    Thread.sleep(100);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException("interrupted while waiting for Bolt", ie);
                }
            }
        }
    }

    private static Long size(String value, String option) {
        try {
            return SettingValueParsers.BYTES.parse(value);
        } catch (RuntimeException e) {
            fail(option + " must be a size like 128m or 1g, got '" + value + "'");
            return null;
        }
    }

    private static String rootMessage(Throwable t) {
        Throwable root = t;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        return root == t ? String.valueOf(t.getMessage()) : t.getMessage() + " (" + root + ")";
    }

    private static void fail(String message) {
        System.err.println("haorch-neo4j: " + message);
        System.exit(2);
    }
}
