//! The command table and dispatch: names, arity, flags and key positions as Redis declares
//! them, the errors Redis gives before a command runs (unknown command, wrong number of
//! arguments, authentication, out of memory), and transactions (`MULTI`/`EXEC`/`WATCH`).
//!
//! The table is a static array sorted by name and searched by binary search with an ASCII
//! case-insensitive comparison, so dispatch allocates nothing and costs about a dozen byte
//! comparisons. Each entry carries what `COMMAND INFO` reports, so clients that ask the server
//! about its commands (redis-py's cluster code, `redis-cli`'s hints) see Redis' answers.

use crate::keyspace::{Keyspace, DATABASES};
use crate::reply::Reply;

/// The command writes to the keyspace.
pub const WRITE: u32 = 1 << 0;
/// The command only reads.
pub const READONLY: u32 = 1 << 1;
/// The command may grow memory: refused when over `maxmemory` and nothing can be evicted.
pub const DENYOOM: u32 = 1 << 2;
/// The command is O(1) or O(log n).
pub const FAST: u32 = 1 << 3;
/// The command may run before `AUTH` (Redis' `no-auth`).
pub const NO_AUTH: u32 = 1 << 4;
/// The command is refused inside `MULTI` (Redis' `no-multi`), or controls transactions.
pub const NO_MULTI: u32 = 1 << 5;
/// An administrative command.
pub const ADMIN: u32 = 1 << 6;
/// Connection-level command (Redis' `@connection` category).
pub const CONNECTION: u32 = 1 << 7;

/// The flag names `COMMAND INFO` reports, by bit.
pub const FLAG_NAMES: [(u32, &str); 7] = [
    (WRITE, "write"),
    (READONLY, "readonly"),
    (DENYOOM, "denyoom"),
    (ADMIN, "admin"),
    (NO_MULTI, "no_multi"),
    (NO_AUTH, "no_auth"),
    (FAST, "fast"),
];

/// What runs a command. `args[0]` is the command name.
pub type Handler = fn(&mut Ctx<'_>, &[&[u8]]);

/// One command of the table.
#[derive(Clone, Copy)]
pub struct Spec {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis' arity: `n` exactly n arguments (name included), `-n` at least n.
    pub arity: i32,
    /// Flag bits.
    pub flags: u32,
    /// First key argument (0: none).
    pub first_key: i32,
    /// Last key argument (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// The code.
    pub handler: Handler,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec").field("name", &self.name).finish()
    }
}

impl Spec {
    fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// The key arguments of a call, by the table's positions.
    pub fn keys<'a>(&self, args: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let first = self.first_key.max(0) as usize;
        let last = if self.last_key < 0 {
            (args.len() as i64 + i64::from(self.last_key)).max(0) as usize
        } else {
            self.last_key as usize
        };
        let step = self.step.max(1) as usize;
        let range = if first == 0 {
            0..0
        } else {
            first..last.min(args.len().saturating_sub(1)) + 1
        };
        range.step_by(step).map(move |i| args[i])
    }
}

/// Settings a server is started with or changes by `CONFIG SET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `requirepass`: clients must `AUTH` first when set.
    pub requirepass: Option<Vec<u8>>,
    /// `proto-max-bulk-len`: the largest string a client may send.
    pub proto_max_bulk_len: u64,
    /// `timeout`: idle seconds before a client is closed (0: never).
    pub timeout_s: u64,
    /// `maxclients`: connections the front end accepts at most.
    pub maxclients: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            requirepass: None,
            proto_max_bulk_len: 512 * 1024 * 1024,
            timeout_s: 0,
            maxclients: 10_000,
        }
    }
}

/// Server-wide state besides the keyspace: configuration and counters.
#[derive(Debug)]
pub struct Server {
    /// The data.
    pub keyspace: Keyspace,
    /// The configuration.
    pub config: Config,
    /// Commands run (`INFO stats` `total_commands_processed`).
    pub commands_processed: u64,
    /// When the server started (Unix ms).
    pub started_ms: u64,
    /// Connections open now, kept by the front end (`INFO clients`).
    pub connected_clients: u64,
    /// Connections accepted since start (`INFO stats` `total_connections_received`).
    pub connections_received: u64,
    next_client_id: u64,
}

/// Per-connection state a command may read or change.
#[derive(Debug)]
pub struct Client {
    /// Unique id (`CLIENT ID`).
    pub id: u64,
    /// Selected database.
    pub db: usize,
    /// Protocol version, 2 or 3 (`HELLO`).
    pub resp: u8,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT SETINFO lib-name` / `lib-ver`.
    pub lib: (Option<Vec<u8>>, Option<Vec<u8>>),
    /// Whether `AUTH` succeeded (or no password is set).
    pub authenticated: bool,
    /// The commands queued since `MULTI`, if in a transaction.
    pub multi: Option<Vec<Vec<Vec<u8>>>>,
    /// A command queued since `MULTI` was refused: `EXEC` must fail.
    pub multi_failed: bool,
    /// Keys watched: (database, key, version seen).
    pub watched: Vec<(usize, Vec<u8>, u64)>,
    /// Close the connection once the reply is out (`QUIT`, protocol errors).
    pub close_after_reply: bool,
}

/// Most commands a transaction may queue: a bound on the memory one client's `MULTI` holds.
pub const MULTI_QUEUE_MAX: usize = 1 << 20;
/// Most keys one client may `WATCH`.
pub const WATCHED_KEYS_MAX: usize = 1 << 16;

impl Server {
    /// A server over an empty keyspace, started at `now_ms`; `seed` drives sampling.
    pub fn new(config: Config, now_ms: u64, seed: u64) -> Self {
        Self {
            keyspace: Keyspace::new(seed),
            config,
            commands_processed: 0,
            started_ms: now_ms,
            connected_clients: 0,
            connections_received: 0,
            next_client_id: 1,
        }
    }

    /// State for a new connection.
    pub fn new_client(&mut self) -> Client {
        let id = self.next_client_id;
        self.next_client_id += 1;
        Client {
            id,
            db: 0,
            resp: 2,
            name: None,
            lib: (None, None),
            authenticated: self.config.requirepass.is_none(),
            multi: None,
            multi_failed: false,
            watched: Vec::new(),
            close_after_reply: false,
        }
    }

    /// Runs one command from `client`, replying to `out`. Never panics on any input.
    pub fn execute(
        &mut self,
        client: &mut Client,
        args: &[&[u8]],
        now_ms: u64,
        out: &mut dyn Reply,
    ) {
        let Some(&name) = args.first() else {
            return;
        };
        let Some(spec) = lookup(name) else {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            out.error(&unknown_command(args));
            return;
        };
        if !spec.arity_ok(args.len()) {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            out.error(&format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            ));
            return;
        }
        if let Err(error) = check_subcommand(spec, args) {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            out.error(&error);
            return;
        }
        if !client.authenticated && spec.flags & NO_AUTH == 0 {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            out.error("NOAUTH Authentication required.");
            return;
        }
        let controls_transaction = matches!(
            spec.name,
            "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
        );
        if let (Some(queue), false) = (client.multi.as_mut(), controls_transaction) {
            if queue.len() >= MULTI_QUEUE_MAX {
                client.multi_failed = true;
                out.error("ERR too many commands queued in MULTI");
                return;
            }
            queue.push(args.iter().map(|a| a.to_vec()).collect());
            out.simple("QUEUED");
            return;
        }
        self.run(spec, client, args, now_ms, out);
    }

    fn run(
        &mut self,
        spec: &Spec,
        client: &mut Client,
        args: &[&[u8]],
        now_ms: u64,
        out: &mut dyn Reply,
    ) {
        if spec.flags & DENYOOM != 0 && self.keyspace.make_room(now_ms).is_err() {
            out.error("OOM command not allowed when used memory > 'maxmemory'.");
            return;
        }
        self.commands_processed += 1;
        let mut ctx = Ctx {
            server: self,
            client,
            now_ms,
            out,
        };
        (spec.handler)(&mut ctx, args);
    }

    /// Runs the queued commands of `client`'s transaction (`EXEC`).
    pub(crate) fn exec(&mut self, client: &mut Client, now_ms: u64, out: &mut dyn Reply) {
        let Some(queue) = client.multi.take() else {
            out.error("ERR EXEC without MULTI");
            return;
        };
        let failed = std::mem::take(&mut client.multi_failed);
        let watched = std::mem::take(&mut client.watched);
        if failed {
            out.error("EXECABORT Transaction discarded because of previous errors.");
            return;
        }
        let touched = watched
            .iter()
            .any(|(db, key, version)| self.keyspace.watch_version(*db, key, now_ms) != *version);
        if touched {
            out.null_array();
            return;
        }
        out.array(queue.len());
        for command in &queue {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            match lookup(args[0]) {
                Some(spec) => self.run(spec, client, &args, now_ms, out),
                None => out.error(&unknown_command(&args)),
            }
        }
    }
}

/// What a command's code sees.
pub struct Ctx<'a> {
    /// The server.
    pub server: &'a mut Server,
    /// The calling client.
    pub client: &'a mut Client,
    /// Unix milliseconds now.
    pub now_ms: u64,
    /// Where the reply goes.
    pub out: &'a mut dyn Reply,
}

impl Ctx<'_> {
    /// The keyspace.
    pub fn ks(&mut self) -> &mut Keyspace {
        &mut self.server.keyspace
    }
    /// The selected database.
    pub fn db(&self) -> usize {
        self.client.db
    }
    /// Replies `-ERR syntax error`.
    pub fn syntax_error(&mut self) {
        self.out.error("ERR syntax error");
    }
    /// Replies Redis' `WRONGTYPE` error.
    pub fn wrong_type(&mut self) {
        self.out
            .error("WRONGTYPE Operation against a key holding the wrong kind of value");
    }
    /// Parses an integer argument, replying Redis' error if it is not one.
    pub fn int_arg(&mut self, arg: &[u8]) -> Option<i64> {
        let n = crate::number::parse_i64(arg);
        if n.is_none() {
            self.out
                .error("ERR value is not an integer or out of range");
        }
        n
    }
    /// Parses a float argument, replying Redis' error if it is not one.
    pub fn float_arg(&mut self, arg: &[u8]) -> Option<f64> {
        let n = crate::number::parse_f64(arg);
        if n.is_none() {
            self.out.error("ERR value is not a valid float");
        }
        n
    }
}

/// The `unknown command` error exactly as Redis 7 words it: the name and the first
/// arguments, each quoted and cut to 128 bytes, newlines turned into spaces.
fn unknown_command(args: &[&[u8]]) -> String {
    let mut rest = String::new();
    for arg in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push('\'');
        rest.push_str(&String::from_utf8_lossy(&arg[..arg.len().min(room)]));
        rest.push_str("' ");
    }
    let name = String::from_utf8_lossy(&args[0][..args[0].len().min(128)]).into_owned();
    format!("ERR unknown command '{name}', with args beginning with: {rest}")
        .replace(['\r', '\n'], " ")
}

/// The subcommands of Redis 7.2's container commands, with their arities: Redis looks a
/// subcommand up like a command, so an unknown one or a wrong count is refused before the
/// command runs (and inside `MULTI`, before it is queued), in words of its own.
const SUBCOMMANDS: &[(&str, &[(&str, i32)])] = &[
    (
        "client",
        &[
            ("caching", 3),
            ("getname", 2),
            ("getredir", 2),
            ("help", 2),
            ("id", 2),
            ("info", 2),
            ("kill", -3),
            ("list", -2),
            ("no-evict", 3),
            ("no-touch", 3),
            ("pause", -3),
            ("reply", 3),
            ("setinfo", 4),
            ("setname", 3),
            ("tracking", -3),
            ("trackinginfo", 2),
            ("unblock", -3),
            ("unpause", 2),
        ],
    ),
    (
        "command",
        &[
            ("count", 2),
            ("docs", -2),
            ("getkeys", -3),
            ("getkeysandflags", -3),
            ("help", 2),
            ("info", -2),
            ("list", -2),
        ],
    ),
    (
        "config",
        &[
            ("get", -3),
            ("help", 2),
            ("resetstat", 2),
            ("rewrite", 2),
            ("set", -4),
        ],
    ),
    (
        "object",
        &[
            ("encoding", 3),
            ("freq", 3),
            ("help", 2),
            ("idletime", 3),
            ("refcount", 3),
        ],
    ),
];

/// For a container command (`OBJECT`, `CLIENT`, `CONFIG`, `COMMAND`), Redis' error for an
/// unknown subcommand or a wrong number of arguments to a known one.
fn check_subcommand(spec: &Spec, args: &[&[u8]]) -> Result<(), String> {
    let Some((_, subs)) = SUBCOMMANDS.iter().find(|(name, _)| *name == spec.name) else {
        return Ok(());
    };
    // `COMMAND` alone is a command of its own (arity -1); the others need a subcommand,
    // which their arity (-2) has checked.
    let Some(&sub) = args.get(1) else {
        return Ok(());
    };
    let Some(&(sub_name, arity)) = subs
        .iter()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(sub))
    else {
        return Err(format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            String::from_utf8_lossy(&sub[..sub.len().min(128)]),
            String::from_utf8_lossy(args[0]).to_uppercase()
        ));
    };
    let argc = args.len() as i64;
    let arity = i64::from(arity);
    let fits = if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "ERR wrong number of arguments for '{}|{sub_name}' command",
            spec.name
        ))
    }
}

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    let table = crate::commands::TABLE;
    table
        .binary_search_by(|spec| {
            let a = spec.name.as_bytes().iter().copied();
            let b = name.iter().map(u8::to_ascii_lowercase);
            a.cmp(b)
        })
        .ok()
        .map(|i| &table[i])
}

/// Every command, sorted by name.
pub fn table() -> &'static [Spec] {
    crate::commands::TABLE
}

/// Parses a database index as `SELECT` does: `Err` with Redis' reply text.
pub fn parse_db(arg: &[u8]) -> Result<usize, &'static str> {
    match crate::number::parse_i64(arg) {
        None => Err("ERR value is not an integer or out of range"),
        Some(n) if n < 0 || n >= DATABASES as i64 => Err("ERR DB index is out of range"),
        Some(n) => Ok(n as usize),
    }
}
