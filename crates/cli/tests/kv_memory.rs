//! End-to-end: `melange bench kv-memory` with a small key count starts redis-server,
//! memcached and `melange kv` (loaded over RESP and over its memcached port) one after the
//! other, and prints its two tables; every server holds every key, its sampled values read
//! back, and its own count of bytes is at least the keys' and values' bytes.
//!
//! The figures themselves are not asserted (20,000 keys are too few for RSS to say much, and
//! this machine is shared); BENCHMARKS.md has the million-key run. The tools come from
//! `scripts/setup.sh` (redis-server, memcached). In CI (`CI=true`) a missing tool fails the
//! test; elsewhere the test says what it skipped. No root is needed.

use std::process::Command;

/// The `melange` binary under test.
const MELANGE: &str = env!("CARGO_BIN_EXE_melange");
/// Keys per server: enough for every path, few enough for a second of loading in all.
const KEYS: u64 = 20_000;
/// The table's rows, in the order `--servers` gives by default.
const LABELS: [&str; 4] = [
    "redis-server (SET)",
    "memcached (set noreply)",
    "melange kv (SET)",
    "melange kv (memcached set noreply)",
];

#[test]
fn every_server_holds_every_key_and_the_tables_have_a_row_each() {
    for tool in ["redis-server", "memcached"] {
        if !melange_sys::testenv::tool_or_skip("kv-memory benchmark test", tool) {
            return;
        }
    }
    let json = std::env::temp_dir().join(format!(
        "melange-kv-memory-test-{}.json",
        std::process::id()
    ));
    let output = Command::new(MELANGE)
        .args(["bench", "kv-memory", "--keys", &KEYS.to_string()])
        .args(["--settle", "200ms", "--json"])
        .arg(&json)
        .output()
        .expect("running melange bench kv-memory");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench kv-memory failed:\n{stdout}\n{stderr}"
    );

    // The first table: a header with every column, then one row per server with its keys.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("RSS B/key"))
        .unwrap_or_else(|| panic!("no table header:\n{stdout}"));
    for column in [
        "server",
        "version",
        "keys",
        "load s",
        "RSS idle MiB",
        "RSS loaded MiB",
        "RSS B/key",
        "RssAnon B/key",
        "reported MiB",
        "reported B/key",
    ] {
        assert!(
            lines[header].contains(column),
            "no column {column}:\n{stdout}"
        );
    }
    for (row, label) in lines[header + 2..header + 2 + LABELS.len()]
        .iter()
        .zip(LABELS)
    {
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 10, "row {row:?}");
        assert_eq!(cells[0], label, "{stdout}");
        assert_eq!(cells[2], KEYS.to_string(), "{stdout}");
        for number in &cells[3..] {
            number
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("cell {number:?} of {row:?} is not a number"));
        }
    }
    // The second table: each of melange's rows over each peer's.
    assert!(
        stdout.contains("melange / peer, bytes per key:"),
        "{stdout}"
    );
    let ratio_rows = lines.iter().filter(|l| l.contains(" x")).count();
    assert_eq!(ratio_rows, 4, "{stdout}");

    // The JSON: every run verified every key and its sampled values.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file was written"))
            .expect("the --json file is JSON");
    let _ = std::fs::remove_file(&json);
    let rows = results["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), LABELS.len());
    for row in rows {
        let run = &row["runs"][0];
        assert_eq!(run["keys"], KEYS, "{row}");
        assert_eq!(run["keys_held"], KEYS, "{row}");
        assert_eq!(run["sampled_gets_ok"], 16, "{row}");
        // A server's own count can be no less than the bytes it was given: a 14-byte key and
        // a 32-byte value per key.
        let reported = row["reported_per_key"].as_f64().expect("reported_per_key");
        assert!(reported >= 46.0, "{row}");
        assert!(
            run["after"]["process"]["vm_rss_bytes"].as_u64()
                > run["before"]["process"]["vm_rss_bytes"].as_u64(),
            "{row}"
        );
    }
    assert_eq!(results["ratios"].as_array().expect("ratios").len(), 4);
}

#[test]
fn bad_arguments_say_what_to_give() {
    let output = Command::new(MELANGE)
        .args(["bench", "kv-memory", "--keys", "0"])
        .output()
        .expect("running melange bench kv-memory");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--keys 0: give 1 to"), "{stderr}");
}
