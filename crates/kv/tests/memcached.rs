//! memcached's commands over the keyspace: exact reply bytes for every command family, and a
//! differential run against the real memcached (1.6.18, installed by `scripts/setup.sh`).

use melange_core::rng::SplitMix64;
use melange_kv::keyspace::EvictionPolicy;
use melange_kv::memcached::{After, Config, Session, Stats};
use melange_kv::value::Value;
use melange_kv::Keyspace;
use melange_memcache::reply_parse::{Reply, ReplyLimits, ReplyParser};
use melange_memcache::{MetaCode, Piece, Span};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T0: u64 = 1_700_000_000_000;

/// A server of one keyspace and one connection, fed pieces as the app feeds them; it
/// releases the pieces before `hold_from` after each request, so a span it still needs but
/// was told it could release fails the test.
struct Server {
    ks: Keyspace,
    stats: Stats,
    session: Session,
    held: Vec<(u64, Vec<u8>)>,
    now: u64,
    closed: bool,
}

impl Server {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(config: Config) -> Self {
        Self {
            ks: Keyspace::new(7),
            stats: Stats::new(config, 4242, T0),
            session: Session::new(&config).unwrap(),
            held: Vec::new(),
            now: T0,
            closed: false,
        }
    }

    /// Feeds `piece`; returns what was written.
    fn feed_piece(&mut self, piece: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        let offset = self.session.offset();
        self.held.push((offset, piece.to_vec()));
        let mut at = 0;
        loop {
            let fed = self.session.feed(&piece[at..]);
            at += fed.consumed;
            if !fed.ready {
                assert_eq!(at, piece.len(), "not ready but the piece was not consumed");
                break;
            }
            let pieces: Vec<Piece<'_>> = self.held.iter().map(|(o, b)| Piece::new(*o, b)).collect();
            let after =
                self.session
                    .execute(&mut self.ks, &mut self.stats, &pieces, self.now, &mut out);
            if after == After::Close {
                self.closed = true;
                break;
            }
        }
        let hold = self.session.hold_from();
        self.held.retain(|(o, b)| o + b.len() as u64 > hold);
        out
    }

    /// Feeds `stream` as one piece.
    fn send(&mut self, stream: &[u8]) -> Vec<u8> {
        self.feed_piece(stream)
    }

    fn send_cut(&mut self, stream: &[u8], piece_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in stream.chunks(piece_len.max(1)) {
            out.extend(self.feed_piece(piece));
        }
        out
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn check(server: &mut Server, input: &str, expected: &str) {
    let got = server.send(input.as_bytes());
    assert_eq!(show(&got), expected, "for {input:?}");
}

// Text storage and retrieval.

#[test]
fn set_get_and_the_storage_commands() {
    let mut s = Server::new();
    check(&mut s, "set a 5 0 3\r\nabc\r\n", "STORED\r\n");
    check(&mut s, "get a b\r\n", "VALUE a 5 3\r\nabc\r\nEND\r\n");
    check(&mut s, "add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    check(&mut s, "add b 0 0 1\r\nx\r\n", "STORED\r\n");
    check(&mut s, "replace c 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    check(&mut s, "replace b 7 0 2\r\nyy\r\n", "STORED\r\n");
    check(&mut s, "append a 9 0 2\r\nde\r\n", "STORED\r\n");
    check(&mut s, "prepend a 9 0 2\r\n01\r\n", "STORED\r\n");
    check(&mut s, "append zz 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    // append and prepend keep the item's flags.
    check(
        &mut s,
        "get a b\r\n",
        "VALUE a 5 7\r\n01abcde\r\nVALUE b 7 2\r\nyy\r\nEND\r\n",
    );
    check(
        &mut s,
        "set e 0 0 0\r\n\r\nget e\r\n",
        "STORED\r\nVALUE e 0 0\r\n\r\nEND\r\n",
    );
    check(
        &mut s,
        "set a 0 0 1 noreply\r\nz\r\nget a\r\n",
        "VALUE a 0 1\r\nz\r\nEND\r\n",
    );
    // A memcached item is a Redis string with its flags on the entry.
    let slot = s.ks.lookup(0, b"b", s.now).unwrap();
    assert_eq!(s.ks.entry(0, slot).value(), &Value::Str(b"yy".to_vec()));
    assert_eq!(s.ks.entry(0, slot).flags(), 7);
}

#[test]
fn cas_and_gets() {
    let mut s = Server::new();
    check(&mut s, "set k 0 0 1\r\na\r\n", "STORED\r\n");
    let slot = s.ks.lookup(0, b"k", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(
        &mut s,
        "gets k\r\n",
        &format!("VALUE k 0 1 {cas}\r\na\r\nEND\r\n"),
    );
    check(
        &mut s,
        &format!("cas k 0 0 1 {}\r\nb\r\n", cas + 100),
        "EXISTS\r\n",
    );
    check(&mut s, &format!("cas k 0 0 1 {cas}\r\nb\r\n"), "STORED\r\n");
    check(&mut s, &format!("cas k 0 0 1 {cas}\r\nc\r\n"), "EXISTS\r\n");
    check(&mut s, "cas nope 0 0 1 1\r\nc\r\n", "NOT_FOUND\r\n");
    check(&mut s, "cas k 0 0 1 0\r\nc\r\n", "EXISTS\r\n");
    // touch keeps the CAS unique, as memcached does.
    let slot = s.ks.lookup(0, b"k", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(&mut s, "touch k 100\r\n", "TOUCHED\r\n");
    check(
        &mut s,
        &format!("cas k 0 0 1 {cas} noreply\r\nd\r\nget k\r\n"),
        "VALUE k 0 1\r\nd\r\nEND\r\n",
    );
    assert_eq!(s.stats.cas_hits, 2);
    assert_eq!(s.stats.cas_badval, 3);
    assert_eq!(s.stats.cas_misses, 1);
}

#[test]
fn incr_and_decr_as_memcached() {
    let mut s = Server::new();
    check(&mut s, "incr n 1\r\n", "NOT_FOUND\r\n");
    check(&mut s, "set n 3 0 3\r\n100\r\n", "STORED\r\n");
    check(&mut s, "decr n 91\r\n", "9\r\n");
    // Rewritten in place, padded with spaces; the flags stay.
    check(&mut s, "get n\r\n", "VALUE n 3 3\r\n9  \r\nEND\r\n");
    check(
        &mut s,
        "incr n 5\r\nget n\r\n",
        "14\r\nVALUE n 3 3\r\n14 \r\nEND\r\n",
    );
    check(
        &mut s,
        "incr n 986\r\nget n\r\n",
        "1000\r\nVALUE n 3 4\r\n1000\r\nEND\r\n",
    );
    check(&mut s, "decr n 5000\r\n", "0\r\n");
    check(
        &mut s,
        "set m 0 0 20\r\n18446744073709551615\r\nincr m 2\r\n",
        "STORED\r\n1\r\n",
    );
    check(
        &mut s,
        "set x 0 0 2\r\nab\r\nincr x 1\r\n",
        "STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    check(
        &mut s,
        "set x 0 0 0\r\n\r\nincr x 1\r\n",
        "STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    check(
        &mut s,
        "incr n 1 noreply\r\nincr x 1 noreply\r\nincr q 1 noreply\r\nget n\r\n",
        "VALUE n 3 4\r\n1   \r\nEND\r\n",
    );
    check(
        &mut s,
        "incr n abc\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    check(
        &mut s,
        "incr n -1\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    );
}

#[test]
fn delete_touch_gat_and_expiry() {
    let mut s = Server::new();
    check(
        &mut s,
        "set a 0 10 1\r\n1\r\nset b 0 0 1\r\n2\r\n",
        "STORED\r\nSTORED\r\n",
    );
    s.now += 9_999;
    check(&mut s, "get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    s.now += 1;
    check(&mut s, "get a\r\n", "END\r\n");
    check(
        &mut s,
        "touch b 5\r\ntouch a 5\r\n",
        "TOUCHED\r\nNOT_FOUND\r\n",
    );
    check(&mut s, "gat 100 b a\r\n", "VALUE b 0 1\r\n2\r\nEND\r\n");
    s.now += 99_000;
    let slot = s.ks.lookup(0, b"b", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(
        &mut s,
        "gats 0 b\r\n",
        &format!("VALUE b 0 1 {cas}\r\n2\r\nEND\r\n"),
    );
    s.now += 10_000_000;
    check(&mut s, "get b\r\n", "VALUE b 0 1\r\n2\r\nEND\r\n");
    // Negative and past absolute exptimes store an item already expired.
    check(
        &mut s,
        "set b 0 -1 1\r\n3\r\nget b\r\n",
        "STORED\r\nEND\r\n",
    );
    check(
        &mut s,
        "set b 0 1600000000 1\r\n3\r\nget b\r\n",
        "STORED\r\nEND\r\n",
    );
    // An absolute time in the future.
    let at = s.now / 1000 + 60;
    check(&mut s, &format!("set b 0 {at} 1\r\n4\r\n"), "STORED\r\n");
    s.now += 59_000;
    check(&mut s, "get b\r\n", "VALUE b 0 1\r\n4\r\nEND\r\n");
    s.now += 1_000;
    check(&mut s, "get b\r\n", "END\r\n");
    // gat with a negative exptime returns the value one last time.
    check(
        &mut s,
        "set c 0 0 1\r\n5\r\ngat -1 c\r\nget c\r\n",
        "STORED\r\nVALUE c 0 1\r\n5\r\nEND\r\nEND\r\n",
    );
    check(
        &mut s,
        "touch c 10 noreply\r\ndelete c\r\n",
        "NOT_FOUND\r\n",
    );
    check(
        &mut s,
        "set c 0 0 1\r\n5\r\ndelete c\r\ndelete c\r\n",
        "STORED\r\nDELETED\r\nNOT_FOUND\r\n",
    );
    check(
        &mut s,
        "set c 0 0 1\r\n5\r\ndelete c 0\r\ndelete c noreply\r\ndelete c 0 noreply\r\n",
        "STORED\r\nDELETED\r\n",
    );
    check(
        &mut s,
        "delete c 5\r\n",
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    );
}

#[test]
fn flush_all_now_and_later() {
    let mut s = Server::new();
    check(
        &mut s,
        "set a 0 0 1\r\n1\r\nflush_all\r\nget a\r\n",
        "STORED\r\nOK\r\nEND\r\n",
    );
    check(
        &mut s,
        "set a 0 0 1\r\n1\r\nflush_all 10\r\nget a\r\n",
        "STORED\r\nOK\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
    );
    s.now += 9_000;
    check(&mut s, "get a\r\n", "END\r\n");
    check(
        &mut s,
        "set a 0 0 1\r\n1\r\nflush_all noreply\r\nget a\r\n",
        "STORED\r\nEND\r\n",
    );
    check(
        &mut s,
        "flush_all x\r\n",
        "CLIENT_ERROR invalid exptime argument\r\n",
    );
    // Other databases (Redis' SELECT) are left alone.
    s.ks.store(3, b"r", Value::Str(b"x".to_vec()), false, s.now);
    check(&mut s, "flush_all\r\n", "OK\r\n");
    assert_eq!(s.ks.db(3).len(), 1);
}

#[test]
fn other_text_commands() {
    let mut s = Server::new();
    check(&mut s, "version\r\n", "VERSION 1.6.18\r\n");
    check(&mut s, "verbosity 1\r\nverbosity 1 noreply\r\n", "OK\r\n");
    check(&mut s, "verbosity\r\n", "ERROR\r\n");
    check(&mut s, "bogus\r\n", "ERROR\r\n");
    check(
        &mut s,
        "cache_memlimit 4\r\n",
        "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
    );
    check(&mut s, "cache_memlimit 64\r\n", "OK\r\n");
    assert_eq!(s.ks.maxmemory, 64 << 20);
    check(&mut s, "stats bogus\r\n", "ERROR\r\n");
    check(
        &mut s,
        "stats detail\r\n",
        "CLIENT_ERROR usage: stats detail on|off|dump\r\n",
    );
    check(&mut s, "stats reset\r\n", "RESET\r\n");
    for group in ["settings", "items", "slabs", "sizes", "conns"] {
        let out = show(&s.send(format!("stats {group}\r\n").as_bytes()));
        assert!(out.ends_with("END\r\n"), "{group}: {out}");
        assert!(
            out.lines().all(|l| l.starts_with("STAT ") || l == "END"),
            "{out}"
        );
    }
    check(&mut s, "quit\r\nversion\r\n", "");
    assert!(s.closed);
}

#[test]
fn general_stats_count_what_memcached_counts() {
    let mut s = Server::new();
    s.stats.curr_connections = 3;
    s.send(b"set a 0 0 1\r\n1\r\nget a b\r\ndelete b\r\nincr a 1\r\ntouch a 1\r\n");
    let out = show(&s.send(b"stats\r\n"));
    let stat = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .unwrap_or_else(|| panic!("{name} missing in {out}"))
            .to_string()
    };
    assert_eq!(stat("pid"), "4242");
    assert_eq!(stat("version"), "1.6.18");
    assert_eq!(stat("curr_connections"), "3");
    assert_eq!(stat("cmd_get"), "2");
    assert_eq!(stat("get_hits"), "1");
    assert_eq!(stat("get_misses"), "1");
    assert_eq!(stat("cmd_set"), "1");
    assert_eq!(stat("delete_misses"), "1");
    assert_eq!(stat("incr_hits"), "1");
    assert_eq!(stat("touch_hits"), "1");
    assert_eq!(stat("curr_items"), "1");
    assert_eq!(stat("total_items"), "1");
    assert_eq!(stat("evictions"), "0");
    assert!(out.ends_with("END\r\n"));
}

// Errors, noreply and resynchronisation.

#[test]
fn parse_errors_in_memcached_words() {
    let mut s = Server::new();
    check(
        &mut s,
        "set a 0 0 1\r\nxyz\r\nget a\r\n",
        "CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n",
    );
    check(&mut s, "set a 0 0 1 noreply\r\nxyz\r\n", "ERROR\r\n");
    check(
        &mut s,
        "set a x 0 1\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    );
    check(&mut s, "set a 0 0\r\n", "ERROR\r\n");
    check(
        &mut s,
        "touch a x\r\n",
        "CLIENT_ERROR invalid exptime argument\r\n",
    );
    check(&mut s, "get\r\n", "ERROR\r\n");
    let long_key = "k".repeat(251);
    check(
        &mut s,
        &format!("get {long_key}\r\n"),
        "CLIENT_ERROR bad command line format\r\n",
    );
    check(&mut s, "mg a v v\r\n", "CLIENT_ERROR duplicate flag\r\n");
    check(
        &mut s,
        "md a Y\r\n",
        "CLIENT_ERROR invalid or duplicate flag\r\n",
    );
    check(
        &mut s,
        "ms a 2 MX\r\nhi\r\nmn\r\n",
        "CLIENT_ERROR invalid mode for ms M token\r\nMN\r\n",
    );
    // 1.6.18 has no E flag.
    check(
        &mut s,
        "mg a E5\r\nms a 2 E5\r\nhi\r\nmn\r\n",
        "CLIENT_ERROR invalid flag\r\nCLIENT_ERROR invalid flag\r\nMN\r\n",
    );
    // A line too long closes the connection.
    let out = s.send(format!("{}\r\nversion\r\n", "x".repeat(3000)).as_bytes());
    assert_eq!(show(&out), "CLIENT_ERROR line too long\r\n");
    assert!(s.closed);
}

#[test]
fn items_over_the_size_limit_are_refused_and_skipped() {
    let mut s = Server::new();
    // memcached charges 48 bytes of header, the key and its NUL, 4 bytes of non-zero
    // flags, the data with its CRLF and 8 bytes of CAS against the 1 MiB limit.
    let fits = (1 << 20) - 48 - 2 - 2 - 8;
    let value = vec![b'v'; fits + 1];
    let mut input = format!("set k 0 0 {}\r\n", fits + 1).into_bytes();
    input.extend_from_slice(&value);
    input.extend_from_slice(b"\r\nget k\r\n");
    check(&mut s, "set k 0 0 1\r\nx\r\n", "STORED\r\n");
    let out = s.send_cut(&input, 1448);
    // The old item is dropped, as memcached does for a refused set.
    assert_eq!(
        show(&out),
        "SERVER_ERROR object too large for cache\r\nEND\r\n"
    );
    // The refused data was not held.
    assert!(s.held.iter().map(|(_, b)| b.len()).sum::<usize>() < 3000);
    let mut input = format!("set k 0 0 {fits}\r\n").into_bytes();
    input.extend_from_slice(&value[..fits]);
    input.extend_from_slice(b"\r\nmg k s\r\n");
    assert_eq!(
        show(&s.send_cut(&input, 1448)),
        format!("STORED\r\nHD s{fits}\r\n")
    );
    // With flags the limit is 4 bytes lower.
    let mut input = format!("ms k {fits} F1\r\n").into_bytes();
    input.extend_from_slice(&value[..fits]);
    input.extend_from_slice(b"\r\nmg k s\r\n");
    assert_eq!(
        show(&s.send_cut(&input, 1000)),
        "SERVER_ERROR object too large for cache\r\nEN\r\n"
    );
    check(&mut s, "set k 0 0 2000000 noreply\r\n", "");
    assert_eq!(show(&s.send_cut(&vec![b'z'; 2_000_002], 1448)), "");
    check(&mut s, "mn\r\n", "MN\r\n");
    assert_eq!(s.stats.store_too_large, 3);
}

#[test]
fn a_one_mebibyte_value_in_1448_byte_pieces() {
    let config = Config {
        item_size_max: 2 << 20,
        ..Config::default()
    };
    let mut s = Server::with(config);
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut input = b"set big 1 0 1048576\r\n".to_vec();
    input.extend_from_slice(&value);
    input.extend_from_slice(b"\r\nget big\r\n");
    let out = s.send_cut(&input, 1448);
    let mut expected = b"STORED\r\nVALUE big 1 1048576\r\n".to_vec();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\nEND\r\n");
    assert!(out == expected, "1 MiB round trip");
    // And at the default limit, refused as memcached refuses it.
    let mut s = Server::new();
    assert!(show(&s.send_cut(&input, 1448))
        .starts_with("SERVER_ERROR object too large for cache\r\nEND\r\n"));
}

#[test]
fn out_of_memory_with_noeviction() {
    let mut s = Server::new();
    s.ks.policy = EvictionPolicy::NoEviction;
    check(&mut s, "set a 0 0 5\r\nhello\r\n", "STORED\r\n");
    s.ks.maxmemory = 1;
    check(
        &mut s,
        "add b 0 0 1\r\nx\r\n",
        "SERVER_ERROR out of memory storing object\r\n",
    );
    check(
        &mut s,
        "ms b 1\r\nx\r\n",
        "SERVER_ERROR out of memory storing object\r\n",
    );
    // A refused set drops the old item (memcached will not keep stale data).
    check(&mut s, "set a 0 0 1 noreply\r\nx\r\nget a\r\n", "END\r\n");
    s.ks.policy = EvictionPolicy::AllKeysLru;
    s.ks.maxmemory = 1 << 20;
    for i in 0..20_000 {
        s.send(format!("set k{i} 0 0 10 noreply\r\n0123456789\r\n").as_bytes());
    }
    assert!(s.ks.stats.evicted_keys > 0);
    let out = show(&s.send(b"stats\r\n"));
    assert!(out.contains(&format!("STAT evictions {}\r\n", s.ks.stats.evicted_keys)));
}

#[test]
fn every_cut_of_a_small_stream_gives_the_same_replies() {
    let stream = b"set a 1 0 5\r\nhello\r\nget a\r\nms b 3 T0 F2 c\r\nabc\r\nmg b v f k O9\r\n\
        append a 0 0 2\r\n!!\r\nincr c 1\r\nmn\r\nset c 0 0 1 noreply\r\n7\r\nincr c 2\r\ngets a\r\n";
    let whole = {
        let mut s = Server::new();
        s.send(stream)
    };
    assert!(
        show(&whole).contains("VALUE a 1 5\r\nhello\r\n"),
        "{}",
        show(&whole)
    );
    for cut in 0..=stream.len() {
        let mut s = Server::new();
        let mut out = s.feed_piece(&stream[..cut]);
        out.extend(s.feed_piece(&stream[cut..]));
        assert_eq!(show(&out), show(&whole), "cut at {cut}");
    }
    for a in (0..stream.len()).step_by(3) {
        for b in (a..stream.len()).step_by(5) {
            let mut s = Server::new();
            let mut out = s.feed_piece(&stream[..a]);
            out.extend(s.feed_piece(&stream[a..b]));
            out.extend(s.feed_piece(&stream[b..]));
            assert_eq!(show(&out), show(&whole), "cuts at {a}, {b}");
        }
    }
    for len in 1..8 {
        let mut s = Server::new();
        assert_eq!(
            show(&s.send_cut(stream, len)),
            show(&whole),
            "pieces of {len}"
        );
    }
}

// Meta commands.

#[test]
fn meta_get_and_set() {
    let mut s = Server::new();
    check(
        &mut s,
        "mg a v\r\nmg a v q\r\nmg a k O12 v\r\n",
        "EN\r\nEN ka O12\r\n",
    );
    check(&mut s, "ms a 2 T100 F5\r\nhi\r\n", "HD\r\n");
    let slot = s.ks.lookup_quiet(0, b"a", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(
        &mut s,
        "mg a v c t f s k O1 h\r\n",
        &format!("VA 2 c{cas} t100 f5 s2 ka O1 h0\r\nhi\r\n"),
    );
    check(&mut s, "mg a h\r\nmg a q\r\n", "HD h1\r\nHD\r\n");
    check(
        &mut s,
        "ms a 2 q\r\nho\r\nms a 2 ME q\r\nxx\r\nmn\r\n",
        "NS\r\nMN\r\n",
    );
    check(
        &mut s,
        "ms a 1 MA\r\n!\r\nms a 1 MP k\r\n<\r\nmg a v\r\n",
        "HD\r\nHD ka\r\nVA 4\r\n<ho!\r\n",
    );
    check(
        &mut s,
        "ms z 1 MR\r\nx\r\nms z 1 MA N10\r\nx\r\nms z 1 ME\r\nx\r\n",
        "NS\r\nNS\r\nHD\r\n",
    );
    let slot = s.ks.lookup_quiet(0, b"z", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(
        &mut s,
        &format!("ms z 1 C{} c\r\ny\r\n", cas + 9),
        "EX c0\r\n",
    );
    check(
        &mut s,
        &format!("ms z 1 C{cas} c\r\ny\r\n"),
        &format!("HD c{}\r\n", cas + 1),
    );
    check(&mut s, "ms q 1 C5\r\ny\r\n", "NF\r\n");
    // T on a hit touches; t before T reports the old TTL.
    check(&mut s, "mg z t T30\r\nmg z t\r\n", "HD t-1\r\nHD t30\r\n");
    s.now += 30_000;
    check(&mut s, "mg z\r\n", "EN\r\n");
    // Binary keys.
    check(
        &mut s,
        "ms Zm9v 1 b\r\nx\r\nmg Zm9v b k v\r\nget foo\r\n",
        "HD\r\nVA 1 kZm9v b\r\nx\r\nVALUE foo 0 1\r\nx\r\nEND\r\n",
    );
    check(&mut s, "mn\r\n", "MN\r\n");
}

#[test]
fn meta_vivify_recache_and_stale() {
    let mut s = Server::new();
    // N on a miss creates an empty item and wins the token; later fetches see Z.
    check(&mut s, "mg a N30 t s\r\n", "HD t30 s0 W\r\n");
    check(&mut s, "mg a t v\r\n", "VA 0 t30 Z\r\n\r\n");
    // R wins when the TTL left is below it, once.
    check(
        &mut s,
        "ms a 3 T100\r\nnew\r\nmg a R30 v\r\nmg a R200 v\r\nmg a R200 v\r\n",
        "HD\r\nVA 3\r\nnew\r\nVA 3 W\r\nnew\r\nVA 3 Z\r\nnew\r\n",
    );
    // md I marks the item stale with a new CAS: the next fetch wins, later ones see Z X.
    let slot = s.ks.lookup_quiet(0, b"a", s.now).unwrap();
    let before = s.ks.entry(0, slot).version();
    check(&mut s, "md a I T30\r\n", "HD\r\n");
    let slot = s.ks.lookup_quiet(0, b"a", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    assert!(cas > before);
    check(
        &mut s,
        "mg a v c\r\n",
        &format!("VA 3 c{cas} X W\r\nnew\r\n"),
    );
    check(&mut s, "mg a v t\r\n", "VA 3 t30 Z X\r\nnew\r\n");
    // A stale item takes a set with a lower CAS under I, and stays stale.
    check(
        &mut s,
        &format!("ms a 3 I C{}\r\nold\r\nmg a v t\r\n", cas - 1),
        "HD\r\nVA 3 t30 Z X\r\nold\r\n",
    );
}

#[test]
fn meta_delete_and_arith() {
    let mut s = Server::new();
    check(&mut s, "md a\r\nmd a q k O5\r\n", "NF\r\nNF ka O5\r\n");
    check(
        &mut s,
        "ms a 1\r\nx\r\nmd a C999\r\nmd a q\r\nmd a\r\n",
        "HD\r\nEX\r\nNF\r\n",
    );
    check(&mut s, "ma n\r\nma n q\r\n", "NF\r\nNF\r\n");
    check(
        &mut s,
        "ma n N0 J13 v\r\nma n v\r\nma n MD D20 v t\r\nma n q\r\nmg n v\r\n",
        "VA 2\r\n13\r\nVA 2\r\n14\r\nVA 1 t-1\r\n0\r\nVA 2\r\n1 \r\n",
    );
    let slot = s.ks.lookup_quiet(0, b"n", s.now).unwrap();
    let cas = s.ks.entry(0, slot).version();
    check(
        &mut s,
        &format!("ma n C{} c\r\nma n C{cas} c k\r\n", cas + 1),
        &format!("EX\r\nHD c{} kn\r\n", cas + 1),
    );
    check(
        &mut s,
        "ms x 1\r\nx\r\nma x\r\nma n M+ D18446744073709551615 v\r\n",
        "HD\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\nVA 1\r\n1\r\n",
    );
    check(
        &mut s,
        "ma n MX\r\n",
        "CLIENT_ERROR invalid mode for ma M token\r\n",
    );
    check(&mut s, "ma n N0 q v\r\nma nn N0 q v\r\n", "VA 1\r\n0\r\n");
    check(
        &mut s,
        "md x x\r\n",
        "CLIENT_ERROR invalid or duplicate flag\r\n",
    );
}

#[test]
fn meta_debug_and_noop() {
    let mut s = Server::new();
    check(
        &mut s,
        "set m 0 0 1\r\n1\r\nms mm 1 T100 F3\r\nx\r\n",
        "STORED\r\nHD\r\n",
    );
    let cas = |s: &mut Server, k: &[u8]| {
        let slot = s.ks.lookup_quiet(0, k, s.now).unwrap();
        s.ks.entry(0, slot).version()
    };
    let (m, mm) = (cas(&mut s, b"m"), cas(&mut s, b"mm"));
    check(
        &mut s,
        "me m\r\n",
        &format!("ME m exp=-1 la=0 cas={m} fetch=no cls=1 size=61\r\n"),
    );
    check(
        &mut s,
        "me mm\r\nme zz\r\nmg mm h l\r\nme mm\r\nmn\r\n",
        &format!(
            "ME mm exp=-100 la=0 cas={mm} fetch=no cls=1 size=66\r\nEN\r\nHD h0 l0\r\n\
             ME mm exp=-100 la=0 cas={mm} fetch=yes cls=1 size=66\r\nMN\r\n"
        ),
    );
}

// The differential run against the real memcached.

/// A memcached child process, killed when dropped (also when a test panics).
struct Memcached {
    child: Child,
    port: u16,
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `memcached -p <free port> -U 0 -l 127.0.0.1`, or `None` (after saying so) when it
/// is not installed; with `CI=true` a missing memcached fails the test.
fn start_memcached() -> Option<Memcached> {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("memcached").is_file())
    });
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "memcached not installed (run scripts/setup.sh)"
        );
        println!("SKIPPED: memcached not installed (run scripts/setup.sh)");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut command = Command::new("memcached");
    command.args(["-p", &port.to_string(), "-U", "0", "-l", "127.0.0.1"]);
    // The segmented LRU bumps fetched items asynchronously, holding a reference until its
    // thread gets to them, and memcached's `incr` rewrites in place only when it holds the
    // one reference: so on the segmented LRU the padding of an `incr`ed value (and whether a
    // new item lost its fetched bit) depends on thread timing. Without the LRU maintainer
    // (the flat LRU) a fetch bumps at once.
    command.args(["-o", "no_lru_maintainer"]);
    // memcached refuses to run as root unless told which user to be.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if root {
        command.args(["-u", "root"]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached starts");
    let server = Memcached { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "memcached did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

const LRU_MAINTAINER_STATS: &[&str] = &[
    "lru_maintainer_juggles",
    "evicted_active",
    "moves_to_cold",
    "moves_to_warm",
    "moves_within_lru",
    "direct_reclaims",
    "lru_bumps_dropped",
];

/// One side's reply stream, parsed and normalised: CAS uniques become the order of their
/// first appearance (so equalities are compared, not counters), `stats` values, the version,
/// the last-access seconds and the slab class are dropped, and TTLs keep only their sign
/// (memcached's clock ticks once a second).
struct Replies {
    parser: ReplyParser,
    norm: Norm,
    rendered: Vec<String>,
}

/// The received stream and the CAS uniques seen in it.
struct Norm {
    stream: Vec<u8>,
    cas_ids: HashMap<u64, usize>,
    cas_seen: Vec<u64>,
}

impl Replies {
    fn new() -> Self {
        Self {
            parser: ReplyParser::new(ReplyLimits {
                line_len_max: 1 << 16,
                value_len_max: 4 << 20,
            }),
            norm: Norm {
                stream: Vec::new(),
                cas_ids: HashMap::new(),
                cas_seen: Vec::new(),
            },
            rendered: Vec::new(),
        }
    }

    /// The CAS unique last seen (`$CAS`) and the one before it (`$OLD`).
    fn last_cas(&self, back: usize) -> u64 {
        self.norm
            .cas_seen
            .iter()
            .rev()
            .nth(back)
            .copied()
            .unwrap_or(1)
    }

    /// Takes in received bytes; true once a reply to `mn` was parsed.
    fn absorb(&mut self, bytes: &[u8]) -> bool {
        let start = self.norm.stream.len();
        self.norm.stream.extend_from_slice(bytes);
        let mut at = start;
        let mut saw_mn = false;
        loop {
            let step = self
                .parser
                .advance(&self.norm.stream[at..])
                .unwrap_or_else(|e| {
                    panic!(
                        "malformed reply stream: {e}: {:?}",
                        show(&self.norm.stream[start..])
                    )
                });
            at += step.consumed;
            if step.complete {
                let reply = self.parser.reply().expect("a completed reply");
                let line = self.norm.render(reply);
                saw_mn |= line == "MN";
                // The LRU maintainer's counters: memcached prints them only with the
                // maintainer, which the differential run turns off (see start_memcached).
                // With it, memcached's list matches ours name for name.
                if !LRU_MAINTAINER_STATS
                    .iter()
                    .any(|n| line == format!("STAT {n}"))
                {
                    self.rendered.push(line);
                }
            }
            if at == self.norm.stream.len() && !step.complete {
                break;
            }
        }
        saw_mn
    }
}

impl Norm {
    fn cas(&mut self, cas: u64) -> String {
        if cas == 0 {
            return "0".into();
        }
        let next = self.cas_ids.len();
        let id = *self.cas_ids.entry(cas).or_insert_with(|| {
            self.cas_seen.push(cas);
            next
        });
        format!("#{id}")
    }

    fn text(&self, span: Span) -> String {
        let at = span.offset as usize;
        String::from_utf8_lossy(&self.stream[at..at + span.len as usize])
            .escape_debug()
            .to_string()
    }

    fn render(&mut self, reply: Reply<'_>) -> String {
        match reply {
            Reply::Value {
                key,
                flags,
                cas,
                data,
            } => {
                let cas = cas.map(|c| self.cas(c)).unwrap_or_default();
                format!("VALUE {} {flags} {cas} {}", self.text(key), self.text(data))
            }
            Reply::Status(s) => format!("{s:?}"),
            Reply::Error { message } => format!("ERROR {}", self.text(message)),
            Reply::ClientError { message } => format!("CLIENT_ERROR {}", self.text(message)),
            Reply::ServerError { message } => format!("SERVER_ERROR {}", self.text(message)),
            Reply::Version { .. } => "VERSION".into(),
            Reply::Stat { name, .. } => format!("STAT {}", self.text(name)),
            Reply::Number(n) => n.to_string(),
            Reply::Meta { code, data, flags } => {
                let mut line = String::from_utf8_lossy(code.as_bytes()).into_owned();
                if code == MetaCode::Va {
                    line += &format!(" {}", data.map_or(0, |d| d.len));
                }
                for flag in flags.iter() {
                    let value = self.text(flag.value);
                    let shown = match flag.flag {
                        b'c' => self.cas(value.parse().unwrap_or(u64::MAX)),
                        b't' if value != "-1" => {
                            if value == "0" {
                                "0".into()
                            } else {
                                "+".into()
                            }
                        }
                        b'l' => String::new(),
                        _ => value,
                    };
                    line += &format!(" {}{shown}", flag.flag as char);
                }
                if let Some(d) = data {
                    line += &format!(" {}", self.text(d));
                }
                line
            }
            Reply::MetaDebug { key, info } => {
                let mut line = format!("ME {}", self.text(key));
                for field in self.text(info).split(' ') {
                    let (name, value) = field.split_once('=').unwrap_or((field, ""));
                    let shown = match name {
                        "cas" => self.cas(value.parse().unwrap_or(u64::MAX)),
                        "exp" if value != "-1" => {
                            if value.starts_with('-') {
                                "-".into()
                            } else {
                                value.into()
                            }
                        }
                        "la" | "cls" => String::new(),
                        _ => value.to_string(),
                    };
                    line += &format!(" {name}={shown}");
                }
                line
            }
            Reply::Other { line } => self.text(line),
        }
    }
}

/// One client talking to memcached and to our server at once.
struct Pair {
    _memcached: Memcached,
    conn: TcpStream,
    theirs: Replies,
    ours: Replies,
    server: Server,
    cut: SplitMix64,
    compared: usize,
    /// The last exchanges, for the failure message.
    recent: std::collections::VecDeque<String>,
}

impl Pair {
    fn new(seed: u64) -> Option<Self> {
        let memcached = start_memcached()?;
        let conn = TcpStream::connect(("127.0.0.1", memcached.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.set_nodelay(true).unwrap();
        let mut server = Server::new();
        server.stats = Stats::new(Config::default(), 1, unix_ms());
        Some(Self {
            _memcached: memcached,
            conn,
            theirs: Replies::new(),
            ours: Replies::new(),
            server,
            cut: SplitMix64::new(seed),
            compared: 0,
            recent: std::collections::VecDeque::new(),
        })
    }

    /// Sends `template` (with `$CAS`, `$OLD` and `$BAD` filled in per side) and `mn`, and
    /// compares the normalised replies up to `MN`.
    fn exchange(&mut self, template: &[u8]) {
        let fill = |replies: &Replies| -> Vec<u8> {
            let mut text = show(template)
                .replace("$CAS", &replies.last_cas(0).to_string())
                .replace("$OLD", &replies.last_cas(1).to_string())
                .replace("$BAD", "987654321987");
            text.push_str("mn\r\n");
            text.into_bytes()
        };
        let theirs_in = fill(&self.theirs);
        let ours_in = fill(&self.ours);
        self.server.now = unix_ms();
        let piece = 1 + self.cut.below(200) as usize;
        let out = self.server.send_cut(&ours_in, piece);
        let ours_from = self.ours.rendered.len();
        assert!(
            self.ours.absorb(&out),
            "no MN from us for {:?}",
            show(&ours_in)
        );
        let mns = |r: &[String]| r.iter().filter(|l| *l == "MN").count();
        let want = mns(&self.ours.rendered[ours_from..]);
        self.conn.write_all(&theirs_in).expect("send to memcached");
        let from = self.theirs.rendered.len();
        let mut buf = vec![0u8; 1 << 16];
        while mns(&self.theirs.rendered[from..]) < want {
            let n = self
                .conn
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("memcached did not answer {:?}: {e}", show(&theirs_in)));
            assert!(n > 0, "memcached closed on {:?}", show(&theirs_in));
            self.theirs.absorb(&buf[..n]);
        }
        let theirs = &self.theirs.rendered[from..];
        let ours = &self.ours.rendered[ours_from..];
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("{:?} -> {theirs:?}", show(&theirs_in)));
        assert_eq!(
            ours,
            theirs,
            "replies differ for {:?}; before it:\n{}",
            show(&ours_in),
            self.recent.iter().cloned().collect::<Vec<_>>().join("\n")
        );
        self.compared += 1;
    }

    /// Sends `input`, after which both sides must close the connection.
    fn closes(mut self, input: &[u8]) {
        self.conn.write_all(input).unwrap();
        let mut rest = Vec::new();
        self.conn.read_to_end(&mut rest).expect("memcached closes");
        self.server.now = unix_ms();
        let ours = self.server.send(input);
        assert!(self.server.closed, "we did not close on {:?}", show(input));
        assert_eq!(
            show(&ours),
            show(&rest),
            "before closing on {:?}",
            show(input)
        );
    }
}

/// Hand-written scripts: every command family, its errors and its silences.
const SCRIPTS: &[&str] = &[
    "set a 0 0 1\r\n1\r\n",
    "get a\r\n",
    "get a b c a\r\n",
    "gets a\r\n",
    "cas a 0 0 1 $CAS\r\n2\r\n",
    "cas a 0 0 1 $CAS\r\n3\r\n",
    "cas a 0 0 1 $BAD\r\n3\r\n",
    "gets a\r\ncas a 0 0 1 $CAS noreply\r\n4\r\nget a\r\n",
    "cas nope 0 0 1 5\r\nx\r\n",
    "cas a 0 0 1 0\r\nx\r\n",
    "add a 0 0 1\r\nx\r\nadd b 3 0 1\r\ny\r\nget b\r\n",
    "replace c 0 0 1\r\nx\r\nreplace b 9 0 2\r\nzz\r\ngets b\r\n",
    "append b 0 0 2\r\n!!\r\nprepend b 0 0 2\r\n<<\r\nget b\r\nappend zz 0 0 1\r\nx\r\n",
    "set n 0 0 3\r\n100\r\ndecr n 91\r\nget n\r\nincr n 5\r\nget n\r\nincr n 9999\r\nget n\r\n",
    "decr n 100000\r\nincr nope 1\r\nincr b 1\r\ndecr b 1\r\n",
    "set m 0 0 20\r\n18446744073709551615\r\nincr m 1\r\nset m 0 0 3\r\n 12\r\nincr m 1\r\nset m 0 0 5\r\n7 abc\r\nincr m 1\r\nget m\r\n",
    "set m 0 0 2\r\n-1\r\nincr m 1\r\nset m 0 0 2\r\n-0\r\nincr m 1\r\nset m 0 0 2\r\n+4\r\nincr m 1\r\nset m 0 0 0\r\n\r\nincr m 1\r\n",
    "incr n x\r\nincr n -1\r\nincr n\r\nincr n 1 noreply\r\nget n\r\n",
    "touch a 100\r\ntouch nope 1\r\ntouch a x\r\ntouch a 10 noreply\r\ngets a\r\n",
    "gat 100 a b nope\r\ngats 100 a\r\ngat x a\r\ngat 10\r\ngats\r\n",
    "set e 0 -1 1\r\nx\r\nget e\r\nset e 0 2592001 1\r\nx\r\nget e\r\nadd e 0 0 1\r\ny\r\nget e\r\n",
    "set e 0 0 1\r\nx\r\ngat -1 e\r\nget e\r\nset e 0 0 1\r\nx\r\ntouch e -1\r\nget e\r\n",
    "delete a\r\ndelete a\r\ndelete b 0\r\ndelete c noreply\r\ndelete c 0 noreply\r\ndelete c 1\r\ndelete c 0 x\r\n",
    "set a 1 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nget a\r\n",
    "set a 0 0 1\r\nxyz\r\nget a\r\n",
    "set a 0 0 1 noreply\r\nxyz\r\nget a\r\n",
    "set a 0 0 3\r\nab\r\n\r\nget a\r\n",
    "set a x 0 1\r\nset a 0 x 1\r\nset a 0 0 x\r\nset a 0 0 -1\r\nset a 0 0\r\nset a 0 0 1 2 3\r\n",
    "cas a 0 0 1\r\nx\r\n",
    "bogus\r\nGET a\r\nx\r\n\r\n  get   a  \r\nget\r\n",
    "version\r\nverbosity 1\r\nverbosity 1 noreply\r\nverbosity\r\nverbosity x\r\n",
    "flush_all\r\nget a b n\r\nflush_all noreply\r\nflush_all 0\r\nflush_all x\r\nflush_all 1 2 3\r\n",
    "stats\r\nstats bogus\r\nstats detail\r\nstats reset\r\n",
    "cache_memlimit 4\r\ncache_memlimit 2000000000\r\ncache_memlimit x\r\n",
    // Keys at the limits.
    "set kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk 0 0 1\r\nx\r\n",
    "get kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\r\n",
    "set kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk 0 0 1\r\nx\r\n",
    // Meta get.
    "mg a\r\nmg a v\r\nmg a v q\r\nmg a k O123 q\r\nmg a k O123\r\n",
    "ms a 2 T100 F5\r\nhi\r\nmg a v c t f s k O1 h l\r\nmg a h\r\nmg a q\r\nmg a u h\r\n",
    "mg a t T30\r\nmg a t\r\nmg a T0 t\r\nmg a t\r\n",
    "mg new N30 t s c v\r\nmg new v c\r\nmg new\r\n",
    "ms r 1 T100\r\nr\r\nmg r R30\r\nmg r R200 c\r\nmg r R200\r\nmg r N10 R200 v\r\n",
    "ms r 1\r\nr\r\nmg r R200\r\n",
    "mg a v v\r\nmg a Y\r\nmg a Tx\r\nmg a T\r\nmg a Fx\r\nmg a E5\r\nmg a x\r\nmg\r\n",
    "mg a c f h k l q s t u v I P L O1 T1 N1 R1\r\nmg a c f h k l q s t u v I P L O1 T1 N1 R1 F1\r\n",
    "mg a O123456789012345678901234567890\r\nmg a O1234567890123456789012345678901\r\n",
    // Meta set.
    "ms b 2\r\nhi\r\nms b 2 c k O9\r\nho\r\nmg b v c\r\nms b 2 q\r\nhu\r\nmn\r\n",
    "ms b 2 ME c\r\nxx\r\nms nb 2 ME c\r\nxx\r\nms b 1 MA\r\n!\r\nms b 1 MP\r\n<\r\nmg b v\r\n",
    "ms nope 1 MR\r\nx\r\nms nope 1 MA\r\nx\r\nms nope 1 MA N30\r\nx\r\nms nope 1 MP\r\nx\r\nms nope 1 MS\r\nx\r\n",
    "mg b c\r\nms b 1 C$CAS c\r\nx\r\nms b 1 C$CAS c\r\ny\r\nms b 1 C$BAD c\r\nz\r\nms b 1 MR C$BAD\r\nz\r\nms nope 1 C5\r\nx\r\n",
    "mg b c\r\nms b 1 MA C$BAD\r\nz\r\nms b 1 MA C$CAS\r\nz\r\nms b 1 ME C5\r\nz\r\nmg b v\r\n",
    "ms b 2 MX\r\nhi\r\nms b 2 Y\r\nhi\r\nms b 2 MXX\r\nhi\r\nms b 2 Fx\r\nhi\r\nms b 2 E5\r\nhi\r\nms b 2 x\r\nhi\r\n",
    "ms b\r\nms b x\r\nms b -1\r\nms\r\nms b 2 q\r\nhix\r\n",
    "ms b 2 T-1\r\nhi\r\nmg b v\r\nms b 0\r\n\r\nmg b v s\r\n",
    "ms b 2 O12345678901234567890123456789012345\r\nhi\r\nmg b v\r\n",
    // Meta delete.
    "md b\r\nmd b\r\nmd b q\r\nms b 1\r\nx\r\nmd b q\r\nmd b q k O5\r\nmd b k O5\r\n",
    "ms b 1\r\nx\r\nmg b c\r\nmd b C$BAD\r\nmd b C$CAS q\r\nmg b\r\n",
    "ms s 1 T100\r\nx\r\nmg s c\r\nmd s I T30\r\nmg s v c t\r\nmg s v c\r\nms s 1 I C$OLD\r\ny\r\nmg s v t\r\n",
    "ms s 1\r\nx\r\nmd s I\r\nmg s c\r\nms s 1 I C$CAS\r\nz\r\nmg s v\r\nms s 1 I C$BAD\r\nz\r\nmg s v\r\n",
    "md b x\r\nmd b v v\r\nmd b Tx\r\nmd\r\n",
    // Meta arithmetic.
    "ma n\r\nma n q\r\nma n N0 J13 v\r\nma n v\r\nma n MD D20 v t\r\nma n q\r\nmg n v\r\n",
    "ma n N0 q v\r\nma nn N0 q v\r\nma nn N50 t v T20\r\nmg nn t\r\nma nn MI D5 v c k O1\r\n",
    "mg n c\r\nma n C$BAD c\r\nma n C$CAS c v\r\nma n M+ D18446744073709551615 v\r\nma n M- D1 v\r\n",
    "ms x 1\r\nx\r\nma x\r\nma n MX\r\nma n Dx\r\nma n Jx\r\nma n MII\r\n",
    "set big 0 0 3\r\n999\r\nma big v\r\nma big MD D995 v\r\nmg big v\r\n",
    // Meta debug and noop.
    "set m 0 0 1\r\n1\r\nme m\r\nms mm 1 T100 F3\r\nx\r\nme mm\r\nme zz\r\nmg mm h l\r\nme mm\r\nme\r\n",
    "mn\r\nmn extra tokens\r\n",
    // Binary keys.
    "ms Zm9v 1 b\r\nx\r\nmg Zm9v b k v\r\nmg foo k v\r\nget foo\r\nms Zm9v 1 b k c\r\ny\r\nmd Zm9v b k q\r\nmd Zm9v b k\r\n",
    "ma YmFy b N0 k v\r\nmg bar k v\r\nme YmFy b\r\nmg Zg= b\r\nmg !!!! b\r\n",
];

#[test]
fn differential_scripts_against_memcached() {
    let Some(mut pair) = Pair::new(1) else { return };
    for script in SCRIPTS {
        pair.exchange(script.as_bytes());
    }
    // Values across the item size limit, and large ones in pieces.
    let fits = (1 << 20) - 48 - 2 - 2 - 8;
    for (len, flags) in [
        (fits, 0),
        (fits + 1, 0),
        (fits - 4, 1),
        (fits - 3, 1),
        (200_000, 7),
    ] {
        let value: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let mut set = format!("set big {flags} 0 {len}\r\n").into_bytes();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\nmg big s f\r\n");
        pair.exchange(&set);
        let mut ms = format!("ms big {len} F{flags}\r\n").into_bytes();
        ms.extend_from_slice(&value);
        ms.extend_from_slice(b"\r\nmg big s f\r\nget big\r\n");
        pair.exchange(&ms);
    }
    // Far over the limit, refused and skipped (silently under noreply).
    for noreply in ["", " noreply"] {
        let mut huge = format!("set big 0 0 2000000{noreply}\r\n").into_bytes();
        huge.extend(std::iter::repeat_n(b'z', 2_000_000));
        huge.extend_from_slice(b"\r\nget big\r\n");
        pair.exchange(&huge);
    }
    println!("compared {} exchanges", pair.compared);
    if let Some(pair) = Pair::new(2) {
        pair.closes(b"set q 0 0 1\r\nx\r\nquit\r\nget q\r\n");
    }
}

/// A fixed-seed stream of commands over a small key set: every command family, with values
/// that are sometimes numbers, flags at the edges, exptimes that expire at once or not, and
/// `noreply`.
fn random_command(rng: &mut SplitMix64, now_s: u64) -> String {
    const KEYS: &[&str] = &["a", "b", "c", "num", "Zm9v", "YWJj"];
    const FLAGS: &[u32] = &[0, 0, 1, 42, 4_294_967_295];
    let pick = |rng: &mut SplitMix64, n: usize| rng.below(n as u64) as usize;
    let key = KEYS[pick(rng, KEYS.len())];
    let noreply = if rng.below(5) == 0 { " noreply" } else { "" };
    let value = match rng.below(8) {
        0 => String::new(),
        1 => "18446744073709551615".into(),
        2 => " 5".into(),
        3 | 4 => rng.below(1_000_000).to_string(),
        _ => (0..rng.below(12))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect(),
    };
    let flags = FLAGS[pick(rng, FLAGS.len())];
    let exptime = match rng.below(8) {
        0 => "100".to_string(),
        1 => "-1".into(),
        2 => "2592001".into(),
        3 => (now_s + 1000).to_string(),
        _ => "0".into(),
    };
    let cas = ["$CAS", "$CAS", "$OLD", "$BAD", "0"][pick(rng, 5)];
    let keys = |rng: &mut SplitMix64| {
        (0..1 + rng.below(3))
            .map(|_| KEYS[rng.below(KEYS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let meta_flags = |rng: &mut SplitMix64, choices: &[&str], binary_ok: bool| {
        let mut out = String::new();
        for flag in choices {
            if rng.below(3) == 0 {
                out.push(' ');
                out.push_str(&flag.replace("$CAS", cas));
            }
        }
        if binary_ok && key.len() == 4 && rng.below(3) == 0 {
            out.push_str(" b");
        }
        out
    };
    let mode = |rng: &mut SplitMix64, modes: &[&str]| {
        if rng.below(2) == 0 {
            String::new()
        } else {
            format!(" M{}", modes[rng.below(modes.len() as u64) as usize])
        }
    };
    let len = value.len();
    match rng.below(20) {
        0..=2 => {
            let cmd = ["set", "add", "replace", "append", "prepend"][pick(rng, 5)];
            format!("{cmd} {key} {flags} {exptime} {len}{noreply}\r\n{value}\r\n")
        }
        3 => format!("cas {key} {flags} {exptime} {len} {cas}{noreply}\r\n{value}\r\n"),
        4 => format!("{} {}\r\n", ["get", "gets"][pick(rng, 2)], keys(rng)),
        5 => format!(
            "{} {exptime} {}\r\n",
            ["gat", "gats"][pick(rng, 2)],
            keys(rng)
        ),
        6 => format!("touch {key} {exptime}{noreply}\r\n"),
        7 => {
            let delta = ["0", "1", "5", "1000", "18446744073709551615"][pick(rng, 5)];
            format!(
                "{} {key} {delta}{noreply}\r\n",
                ["incr", "decr"][pick(rng, 2)]
            )
        }
        8 => format!("delete {key}{noreply}\r\n"),
        9 | 10 => {
            let f = meta_flags(
                rng,
                &[
                    "v", "c", "t", "f", "s", "k", "h", "l", "O12", "q", "T100", "N100", "R200", "u",
                ],
                true,
            );
            format!("mg {key}{f}\r\n")
        }
        11 | 12 => {
            let f = meta_flags(
                rng,
                &["c", "k", "O7", "q", "T100", "F3", "I", "C$CAS"],
                true,
            );
            let m = mode(rng, &["S", "E", "A", "P", "R"]);
            format!("ms {key} {len}{f}{m}\r\n{value}\r\n")
        }
        13 => {
            let f = meta_flags(rng, &["q", "k", "O5", "I", "T30", "C$CAS"], true);
            format!("md {key}{f}\r\n")
        }
        14 | 15 => {
            let f = meta_flags(
                rng,
                &[
                    "N0", "J7", "D3", "v", "t", "c", "q", "k", "O3", "T100", "C$CAS",
                ],
                true,
            );
            let m = mode(rng, &["I", "+", "D", "-"]);
            format!("ma {key}{f}{m}\r\n")
        }
        16 => format!("me {key}\r\n"),
        17 => ["mn\r\n", "version\r\n", "verbosity 0\r\n", "bogus\r\n"][pick(rng, 4)].into(),
        18 => {
            if rng.below(20) == 0 {
                format!("flush_all{noreply}\r\n")
            } else {
                format!("get {key}\r\n")
            }
        }
        _ => {
            if rng.below(20) == 0 {
                "stats\r\n".into()
            } else {
                format!("mg {key} s v f\r\n")
            }
        }
    }
}

#[test]
fn differential_random_commands_against_memcached() {
    let mut total = 0;
    for seed in 0..4u64 {
        let Some(mut pair) = Pair::new(10 + seed) else {
            return;
        };
        let mut rng = SplitMix64::new(0x6d65_6d63_6163_6865 ^ seed);
        let now_s = unix_ms() / 1000;
        for _ in 0..3000 {
            let command = random_command(&mut rng, now_s);
            pair.exchange(command.as_bytes());
        }
        total += pair.compared;
    }
    println!("compared {total} random commands");
}

// The fuzz body, run by `cargo test` too.

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
    #[test]
    fn any_byte_stream_keeps_the_memcached_session_sound(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)
    ) {
        melange_kv::fuzz::memcached(&data);
    }
}

#[test]
fn the_fuzz_body_over_generated_command_streams_and_its_seeds() {
    for seed in 0..64u64 {
        let mut rng = SplitMix64::new(seed);
        let mut data = vec![seed as u8];
        for _ in 0..200 {
            data.extend_from_slice(random_command(&mut rng, T0 / 1000).as_bytes());
        }
        melange_kv::fuzz::memcached(&data);
    }
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/kv_memcached");
    for entry in std::fs::read_dir(seeds).expect("the seeds") {
        melange_kv::fuzz::memcached(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}
