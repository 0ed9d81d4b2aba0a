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

    /// A new connection to the same keyspace.
    fn reconnect(&mut self) {
        self.session = Session::new(&self.stats.config).unwrap();
        self.held.clear();
        self.closed = false;
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
