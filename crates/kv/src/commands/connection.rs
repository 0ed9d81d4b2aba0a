//! Connection, transaction and server commands.

use crate::command::{parse_db, Ctx, FLAG_NAMES};
use crate::keyspace::{EvictionPolicy, DATABASES};

/// The Redis version `melange kv` reports (`HELLO`, `INFO server`): clients pick features by
/// it, and every command they would use at this version that the issue lists is served.
pub const REDIS_VERSION: &str = "7.2.0";

/// `PING [message]`.
pub fn ping(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    match args.len() {
        1 => ctx.out.simple("PONG"),
        2 => ctx.out.bulk(args[1]),
        _ => ctx
            .out
            .error("ERR wrong number of arguments for 'ping' command"),
    }
}

/// `ECHO message`.
pub fn echo(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    ctx.out.bulk(args[1]);
}

/// `QUIT`: OK, then the front end closes the connection.
pub fn quit(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    ctx.client.close_after_reply = true;
    ctx.out.simple("OK");
}

/// `SELECT index`.
pub fn select(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    match parse_db(args[1]) {
        Ok(db) => {
            ctx.client.db = db;
            ctx.out.simple("OK");
        }
        Err(e) => ctx.out.error(e),
    }
}

fn check_password(ctx: &mut Ctx<'_>, user: &[u8], password: &[u8]) -> bool {
    let Some(expected) = ctx.server.config.requirepass.clone() else {
        ctx.out.error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        );
        return false;
    };
    if user != b"default" || password != expected.as_slice() {
        ctx.out
            .error("WRONGPASS invalid username-password pair or user is disabled.");
        return false;
    }
    ctx.client.authenticated = true;
    true
}

/// `AUTH [username] password`.
pub fn auth(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (user, password) = match args.len() {
        2 => (&b"default"[..], args[1]),
        3 => (args[1], args[2]),
        _ => {
            ctx.syntax_error();
            return;
        }
    };
    if check_password(ctx, user, password) {
        ctx.out.simple("OK");
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
pub fn hello(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let mut proto = ctx.client.resp;
    if let Some(v) = args.get(1) {
        match crate::number::parse_i64(v) {
            Some(2) => proto = 2,
            Some(3) => proto = 3,
            Some(_) => {
                ctx.out.error("NOPROTO unsupported protocol version");
                return;
            }
            None => {
                ctx.out
                    .error("ERR Protocol version is not an integer or out of range");
                return;
            }
        }
    }
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match &opt[..] {
            b"AUTH" if i + 2 < args.len() => {
                if !check_password(ctx, args[i + 1], args[i + 2]) {
                    return;
                }
                i += 3;
            }
            b"SETNAME" if i + 1 < args.len() => {
                if !valid_client_name(args[i + 1]) {
                    ctx.out.error(NAME_ERROR);
                    return;
                }
                name = Some(args[i + 1].to_vec());
                i += 2;
            }
            _ => {
                ctx.out.error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(args[i])
                ));
                return;
            }
        }
    }
    if !ctx.client.authenticated {
        ctx.out.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        );
        return;
    }
    if name.is_some() {
        ctx.client.name = name;
    }
    ctx.client.resp = proto;
    let id = ctx.client.id as i64;
    let out = &mut *ctx.out;
    out.set_protocol(proto);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(REDIS_VERSION.as_bytes());
    out.bulk(b"proto");
    out.integer(i64::from(proto));
    out.bulk(b"id");
    out.integer(id);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
}

const NAME_ERROR: &str = "ERR Client names cannot contain spaces, newlines or special characters.";

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// `CLIENT ID|SETNAME|GETNAME|SETINFO|INFO|LIST|NO-EVICT|NO-TOUCH|REPLY|HELP`. `KILL` and
/// the full `LIST` need every connection, which the front end owns; it answers them.
pub fn client(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let sub = args[1].to_ascii_uppercase();
    match (&sub[..], args.len()) {
        (b"ID", 2) => ctx.out.integer(ctx.client.id as i64),
        (b"SETNAME", 3) => {
            if !valid_client_name(args[2]) {
                ctx.out.error(NAME_ERROR);
                return;
            }
            ctx.client.name = (!args[2].is_empty()).then(|| args[2].to_vec());
            ctx.out.simple("OK");
        }
        (b"GETNAME", 2) => match &ctx.client.name {
            Some(name) => {
                let name = name.clone();
                ctx.out.bulk(&name);
            }
            None => ctx.out.null(),
        },
        (b"SETINFO", 4) => {
            let attr = args[2].to_ascii_lowercase();
            if !valid_client_name(args[3]) && !args[3].is_empty() {
                ctx.out.error(&format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&attr)
                ));
                return;
            }
            match &attr[..] {
                b"lib-name" => ctx.client.lib.0 = Some(args[3].to_vec()),
                b"lib-ver" => ctx.client.lib.1 = Some(args[3].to_vec()),
                _ => {
                    ctx.out.error(&format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(args[2])
                    ));
                    return;
                }
            }
            ctx.out.simple("OK");
        }
        (b"INFO", 2) | (b"LIST", 2) => {
            let line = client_line(ctx);
            ctx.out.verbatim("txt", line.as_bytes());
        }
        (b"NO-EVICT" | b"NO-TOUCH", 3) => {
            let on_off = args[2].to_ascii_lowercase();
            if on_off == b"on" || on_off == b"off" {
                ctx.out.simple("OK");
            } else {
                ctx.syntax_error();
            }
        }
        _ => ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(args[1])
        )),
    }
}

/// The calling client's `CLIENT INFO` line.
fn client_line(ctx: &Ctx<'_>) -> String {
    let c = &*ctx.client;
    let text = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    };
    format!(
        "id={} name={} db={} multi={} resp={} lib-name={} lib-ver={}\n",
        c.id,
        text(&c.name),
        c.db,
        c.multi.as_ref().map_or(-1, |q| q.len() as i64),
        c.resp,
        text(&c.lib.0),
        text(&c.lib.1),
    )
}

/// `RESET`: back to a fresh connection's state.
pub fn reset(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    let c = &mut *ctx.client;
    c.db = 0;
    c.resp = 2;
    c.name = None;
    c.multi = None;
    c.multi_failed = false;
    c.watched.clear();
    c.authenticated = ctx.server.config.requirepass.is_none();
    ctx.out.set_protocol(2);
    ctx.out.simple("RESET");
}

/// `MULTI`.
pub fn multi(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    if ctx.client.multi.is_some() {
        ctx.out.error("ERR MULTI calls can not be nested");
        return;
    }
    ctx.client.multi = Some(Vec::new());
    ctx.client.multi_failed = false;
    ctx.out.simple("OK");
}

/// `EXEC`.
pub fn exec(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    let now = ctx.now_ms;
    ctx.server.exec(&mut *ctx.client, now, &mut *ctx.out);
}

/// `DISCARD`.
pub fn discard(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    if ctx.client.multi.take().is_none() {
        ctx.out.error("ERR DISCARD without MULTI");
        return;
    }
    ctx.client.multi_failed = false;
    ctx.client.watched.clear();
    ctx.out.simple("OK");
}

/// `WATCH key [key ...]`.
pub fn watch(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if ctx.client.multi.is_some() {
        ctx.out.error("ERR WATCH inside MULTI is not allowed");
        return;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    for key in &args[1..] {
        if ctx.client.watched.len() >= crate::command::WATCHED_KEYS_MAX {
            ctx.out.error("ERR too many keys watched");
            return;
        }
        if ctx
            .client
            .watched
            .iter()
            .any(|(d, k, _)| *d == db && k == key)
        {
            continue;
        }
        let version = ctx.server.keyspace.watch_version(db, key, now);
        ctx.client.watched.push((db, key.to_vec(), version));
    }
    ctx.out.simple("OK");
}

/// `UNWATCH`.
pub fn unwatch(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    ctx.client.watched.clear();
    ctx.out.simple("OK");
}

/// `TIME`: seconds and microseconds.
pub fn time(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    let now = ctx.now_ms;
    ctx.out.array(2);
    ctx.out.bulk((now / 1000).to_string().as_bytes());
    ctx.out.bulk(((now % 1000) * 1000).to_string().as_bytes());
}

/// `LASTSAVE`: no snapshot is ever taken, so the start time (as a Redis that never saved).
pub fn lastsave(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    ctx.out.integer((ctx.server.started_ms / 1000) as i64);
}

/// `COMMAND`, `COMMAND COUNT|INFO|LIST|DOCS|GETKEYS`.
pub fn command(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let table = crate::command::table();
    let sub = args.get(1).map(|a| a.to_ascii_uppercase());
    match sub.as_deref() {
        None => {
            ctx.out.array(table.len());
            for spec in table {
                command_info(ctx, spec);
            }
        }
        Some(b"COUNT") => ctx.out.integer(table.len() as i64),
        Some(b"LIST") => {
            ctx.out.array(table.len());
            for spec in table {
                ctx.out.bulk(spec.name.as_bytes());
            }
        }
        Some(b"INFO") => {
            let names: Vec<&[u8]> = if args.len() == 2 {
                table.iter().map(|s| s.name.as_bytes()).collect()
            } else {
                args[2..].to_vec()
            };
            ctx.out.array(names.len());
            for name in names {
                match crate::command::lookup(name) {
                    Some(spec) => command_info(ctx, spec),
                    None => ctx.out.null(),
                }
            }
        }
        Some(b"DOCS") => {
            // Docs are optional for clients (redis-cli uses them for hints): an empty map
            // per the protocol says "no docs", which every client accepts.
            ctx.out.map(0);
        }
        Some(b"GETKEYS") if args.len() >= 3 => match crate::command::lookup(args[2]) {
            Some(spec) => {
                let keys: Vec<&[u8]> = spec.keys(&args[2..]).collect();
                if keys.is_empty() {
                    ctx.out.error("ERR The command has no key arguments");
                } else {
                    ctx.out.array(keys.len());
                    for key in keys {
                        ctx.out.bulk(key);
                    }
                }
            }
            None => ctx.out.error("ERR Invalid command specified"),
        },
        Some(_) => ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(args[1])
        )),
    }
}

fn command_info(ctx: &mut Ctx<'_>, spec: &crate::command::Spec) {
    let out = &mut *ctx.out;
    out.array(10);
    out.bulk(spec.name.as_bytes());
    out.integer(i64::from(spec.arity));
    let flags: Vec<&str> = FLAG_NAMES
        .iter()
        .filter(|(bit, _)| spec.flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    out.set(flags.len());
    for flag in flags {
        out.simple(flag);
    }
    out.integer(i64::from(spec.first_key));
    out.integer(i64::from(spec.last_key));
    out.integer(i64::from(spec.step));
    out.set(0); // ACL categories
    out.set(0); // tips
    out.array(0); // key specs
    out.array(0); // subcommands
}

/// The parameters `CONFIG GET` answers, in Redis' names.
const CONFIG_NAMES: [&str; 11] = [
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "proto-max-bulk-len",
    "timeout",
    "databases",
    "requirepass",
    "save",
    "appendonly",
    "appendfsync",
    "hz",
];

fn config_value(ctx: &Ctx<'_>, name: &str) -> String {
    let ks = &ctx.server.keyspace;
    let config = &ctx.server.config;
    match name {
        "maxmemory" => ks.maxmemory.to_string(),
        "maxmemory-policy" => ks.policy.name().to_string(),
        "maxmemory-samples" => crate::keyspace::EVICTION_SAMPLES.to_string(),
        "proto-max-bulk-len" => config.proto_max_bulk_len.to_string(),
        "timeout" => config.timeout_s.to_string(),
        "databases" => DATABASES.to_string(),
        "requirepass" => config
            .requirepass
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        "save" => String::new(),
        "appendonly" => "no".into(),
        "appendfsync" => "everysec".into(),
        "hz" => "10".into(),
        _ => String::new(),
    }
}

/// Parses Redis' memory sizes: `100`, `1kb`, `5mb`, `2gb`, `1k` (1000), `1m`, `1g`.
pub fn parse_memory(arg: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(arg).ok()?.to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mul = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// `CONFIG GET pattern [pattern ...]|SET name value [name value ...]|RESETSTAT`.
pub fn config(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let sub = args[1].to_ascii_uppercase();
    match &sub[..] {
        b"GET" if args.len() >= 3 => {
            let names: Vec<&str> = CONFIG_NAMES
                .iter()
                .copied()
                .filter(|name| {
                    args[2..]
                        .iter()
                        .any(|p| crate::glob::matches(p, name.as_bytes(), true))
                })
                .collect();
            let values: Vec<String> = names.iter().map(|n| config_value(ctx, n)).collect();
            ctx.out.map(names.len());
            for (name, value) in names.iter().zip(values) {
                ctx.out.bulk(name.as_bytes());
                ctx.out.bulk(value.as_bytes());
            }
        }
        b"SET" if args.len() >= 4 && args.len().is_multiple_of(2) => {
            // Check every pair before applying any, as Redis does.
            for pair in args[2..].chunks_exact(2) {
                if let Err(why) = config_check(pair[0], pair[1]) {
                    ctx.out.error(&format!(
                        "ERR CONFIG SET failed (possibly related to argument '{}') - {why}",
                        String::from_utf8_lossy(pair[0])
                    ));
                    return;
                }
            }
            for pair in args[2..].chunks_exact(2) {
                config_apply(ctx, pair[0], pair[1]);
            }
            ctx.out.simple("OK");
        }
        b"RESETSTAT" if args.len() == 2 => {
            ctx.server.keyspace.stats = Default::default();
            ctx.server.commands_processed = 0;
            ctx.out.simple("OK");
        }
        _ => ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(args[1])
        )),
    }
}

fn config_check(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    let name = name.to_ascii_lowercase();
    match &name[..] {
        b"maxmemory" | b"proto-max-bulk-len" => {
            parse_memory(value).map(|_| ()).ok_or("argument must be a memory value")
        }
        b"maxmemory-policy" => EvictionPolicy::from_name(value)
            .map(|_| ())
            .ok_or("argument(s) must be one of the following: volatile-lru, allkeys-lru, volatile-random, allkeys-random, volatile-ttl, noeviction"),
        b"timeout" => crate::number::parse_i64(value)
            .filter(|n| *n >= 0)
            .map(|_| ())
            .ok_or("argument couldn't be parsed into an integer"),
        b"requirepass" | b"save" | b"appendfsync" => Ok(()),
        b"appendonly" => match &value.to_ascii_lowercase()[..] {
            b"no" => Ok(()),
            b"yes" => Err("the append-only file is not available in this build of melange kv"),
            _ => Err("argument must be 'yes' or 'no'"),
        },
        b"databases" => Err("can't set immutable config"),
        _ => Err("Unknown option or number of arguments for CONFIG SET"),
    }
}

fn config_apply(ctx: &mut Ctx<'_>, name: &[u8], value: &[u8]) {
    let name = name.to_ascii_lowercase();
    match &name[..] {
        b"maxmemory" => {
            ctx.server.keyspace.maxmemory = parse_memory(value).unwrap_or(0) as usize;
        }
        b"proto-max-bulk-len" => {
            ctx.server.config.proto_max_bulk_len = parse_memory(value).unwrap_or(0);
        }
        b"maxmemory-policy" => {
            if let Some(p) = EvictionPolicy::from_name(value) {
                ctx.server.keyspace.policy = p;
            }
        }
        b"timeout" => {
            ctx.server.config.timeout_s = crate::number::parse_i64(value).unwrap_or(0) as u64;
        }
        b"requirepass" => {
            ctx.server.config.requirepass = (!value.is_empty()).then(|| value.to_vec());
        }
        _ => {}
    }
}

/// `INFO [section ...]`: the sections and fields clients read on connect.
pub fn info(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let wanted = |section: &str| {
        args.len() == 1
            || args[1..].iter().any(|a| {
                a.eq_ignore_ascii_case(section.as_bytes())
                    || a.eq_ignore_ascii_case(b"all")
                    || a.eq_ignore_ascii_case(b"everything")
                    || a.eq_ignore_ascii_case(b"default")
            })
    };
    let s = &*ctx.server;
    let now = ctx.now_ms;
    let mut text = String::new();
    use std::fmt::Write;
    if wanted("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nos:Linux\r\n\
             arch_bits:64\r\nmultiplexing_api:melange\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\n\
             uptime_in_days:{}\r\nhz:10\r\nexecutable:melange\r\nserver_name:melange-kv\r\n\r\n",
            std::process::id(),
            (now.saturating_sub(s.started_ms)) / 1000,
            (now.saturating_sub(s.started_ms)) / 86_400_000,
        );
    }
    if wanted("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n\r\n",
            s.connected_clients, s.config.maxclients
        );
    }
    if wanted("memory") {
        let used = s.keyspace.used_bytes();
        let _ = write!(
            text,
            "# Memory\r\nused_memory:{used}\r\nused_memory_human:{:.2}K\r\nmaxmemory:{}\r\n\
             maxmemory_policy:{}\r\n\r\n",
            used as f64 / 1024.0,
            s.keyspace.maxmemory,
            s.keyspace.policy.name(),
        );
    }
    if wanted("persistence") {
        text.push_str(
            "# Persistence\r\nloading:0\r\naof_enabled:0\r\nrdb_changes_since_last_save:0\r\n\r\n",
        );
    }
    if wanted("stats") {
        let st = s.keyspace.stats;
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             expired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n\r\n",
            s.connections_received,
            s.commands_processed,
            st.expired_keys,
            st.evicted_keys,
            st.hits,
            st.misses,
        );
    }
    if wanted("replication") {
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wanted("cluster") {
        text.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n");
    }
    if wanted("keyspace") {
        text.push_str("# Keyspace\r\n");
        for db in 0..DATABASES {
            let d = s.keyspace.db(db);
            if !d.is_empty() {
                let _ = write!(
                    text,
                    "db{db}:keys={},expires={},avg_ttl=0\r\n",
                    d.len(),
                    d.volatile_len()
                );
            }
        }
        text.push_str("\r\n");
    }
    let text = text.trim_end_matches("\r\n").to_string() + "\r\n";
    ctx.out.verbatim("txt", text.as_bytes());
}
