//! The namespace lab: two network namespaces joined by one veth pair, standing in for two machines.
//!
//! Arrakis and IX were measured on racks of machines with SR-IOV NICs. Melange's stand-in is one
//! Linux host: namespace `mlg-a` is the client machine, `mlg-b` the server machine, and the veth pair
//! `mlg-va` (10.77.0.1/24, in `mlg-a`) / `mlg-vb` (10.77.0.2/24, in `mlg-b`) is the wire. Native XDP
//! attaches to veth and AF_XDP binds to it in copy mode, so the real dataplane code paths run; a veth
//! costs nothing to create, and two namespaces keep the kernel from short-circuiting traffic through
//! its own loopback, which it would do if both addresses lived in one namespace.
//!
//! The lab is deliberately minimal. Both ends get two RX and two TX queues because an AF_XDP socket
//! binds to one (interface, queue) and the sender picks the receiver's queue, so one queue would hide
//! every multi-queue bug. One setting stands in for a NIC's RSS: `net.core.txrehash=0` in both
//! namespaces, so Linux keeps a TCP flow on its transmit queue (the peer's receive queue) after a
//! retransmission timeout instead of moving it to another engine's queue, where it would be reset.
//! Everything else is left at the kernel's defaults, on purpose: ARP stays
//! dynamic (the dataplane must pass ARP up or answer it, and the lab should catch it when it does
//! not), and the client veth's TX checksum offload stays on (it delivers UDP with a partial checksum,
//! which our stack must tolerate; `up` and `status` print the setting so a benchmark can record it).
//!
//! The rejected alternative was a shell script. This is Rust so that `up` can *repair* a half-built
//! lab (a namespace missing, a veth with one queue, a stale address) instead of failing on
//! "File exists", so that `status --json` gives benchmarks a typed record, and so that the tests can
//! drive the same binary a person runs. It shells out to `ip`, `nft` and `ethtool` rather than
//! speaking rtnetlink itself: this crate forbids `unsafe`, and these tools are the reference users
//! of those kernel interfaces. Every command takes an exclusive lock on `LOCK_PATH`, so two
//! benchmarks that both run `lab up` cannot interleave their repairs.
//!
//! # Impairment, and why the nftables rule sits where it does
//!
//! There is no netem here (no kernel modules), so loss comes from an nftables rule,
//! `numgen random mod 100 < PCT drop`, restricted to UDP so that ARP and ping keep working. Where the
//! rule sits decides which traffic it can touch. Measured on this kernel (6.18) with a one-instruction
//! XDP program on `mlg-vb` and counting nftables chains on both ends:
//!
//! * XDP runs before the `netdev` `ingress` hook: with `XDP_DROP` attached, the ingress chain on
//!   `mlg-vb` counted nothing, and with `XDP_PASS` it counted every packet. So a receive-side rule
//!   never sees what an XDP program redirects to AF_XDP.
//! * The `netdev` `egress` hook on the sending veth runs before the frame crosses to the peer, so it
//!   drops packets before the receiver's XDP program runs. It sees kernel UDP sockets and AF_PACKET
//!   sockets (even with `PACKET_QDISC_BYPASS`).
//! * AF_XDP transmission (copy mode) bypasses the `egress` hook: 64 frames sent from an AF_XDP socket
//!   on `mlg-va` left the egress counter unchanged and all arrived at `mlg-vb`.
//!
//! Hence the default placement: `--ns mlg-a --direction egress`, a `netdev` egress chain on `mlg-va`,
//! which drops client-to-server datagrams from a kernel-socket client before either the Melange XDP
//! server or a kernel UDP server on `mlg-b` sees them. The other placements:
//!
//! | sender \ receiver | kernel socket (no XDP, or `XDP_PASS`) | XDP / AF_XDP |
//! |---|---|---|
//! | kernel socket | sender `egress` or receiver `ingress` | sender `egress` |
//! | AF_XDP | receiver `ingress` | **not possible with nftables** |
//!
//! AF_XDP to AF_XDP traffic cannot be impaired by netfilter at all: it needs the user-space
//! impairment stage, or a drop inside the XDP program. `impair` says so in its output whenever an XDP
//! program on the relevant interface makes the rule partly blind. On a kernel without the `netdev`
//! egress hook (before 5.16), `egress` falls back to an `inet` `output` chain matching the interface,
//! which sees the same locally generated traffic.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// The client namespace.
const NS_A: &str = "mlg-a";
/// The server namespace.
const NS_B: &str = "mlg-b";
/// The nftables table `impair` creates in a namespace (in family `netdev`, or `inet` as a fallback).
const IMPAIR_TABLE: &str = "melange_impair";
/// RX and TX queues on each end of the veth pair.
const QUEUE_COUNT: u64 = 2;
/// Held exclusively for the whole of every lab command.
const LOCK_PATH: &str = "/run/melange-lab.lock";
/// How long `up` waits for both veth ends to become operationally UP.
const UP_WAIT_MAX: Duration = Duration::from_secs(5);

/// One end of the lab: a namespace and the veth end inside it.
#[derive(Clone, Copy, Debug)]
struct End {
    ns: &'static str,
    dev: &'static str,
    /// The address with its prefix length, as `ip addr` prints it.
    addr: &'static str,
    role: &'static str,
}

const END_A: End = End {
    ns: NS_A,
    dev: "mlg-va",
    addr: "10.77.0.1/24",
    role: "client",
};
const END_B: End = End {
    ns: NS_B,
    dev: "mlg-vb",
    addr: "10.77.0.2/24",
    role: "server",
};
const ENDS: [End; 2] = [END_A, END_B];

/// Lab subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Create the lab, or repair a partial one: namespaces mlg-a (client) and mlg-b (server)
    /// joined by veth mlg-va (10.77.0.1/24) <-> mlg-vb (10.77.0.2/24), 2 RX and 2 TX queues each.
    Up(UpArgs),
    /// Remove everything `up` and `impair` made. Safe to run when nothing is there.
    Down,
    /// Show the lab's state: namespaces, interfaces, addresses, queues, XDP programs, impairment.
    Status(StatusArgs),
    /// Drop a percentage of UDP packets with nftables (there is no netem here).
    ///
    /// The default, `--ns mlg-a --direction egress`, drops client-to-server datagrams from a
    /// kernel-socket client before the server's XDP program or socket sees them. An `egress` rule
    /// does not see AF_XDP transmissions, and an `ingress` rule does not see packets an XDP program
    /// consumed or redirected: traffic from an AF_XDP sender to an XDP receiver cannot be impaired by
    /// nftables at all.
    Impair(ImpairArgs),
}

/// Where each veth end's receive work runs: its NAPI poll, which runs the XDP program, copies
/// into an AF_XDP socket's UMEM, and hands packets to the kernel's stack.
///
/// On veth, `inline` (the kernel's default) runs the receiver's poll in the softirq of the CPU
/// that *sent* the frame: the server core pays for the client's receive work and the other
/// way round, which no pair of real hosts does. `threaded` moves each end's poll into kernel
/// threads (`napi/<dev>-<id>`, one per receive queue; veth has NAPI with GRO on) and pins them
/// to that end's host core, so each side's receive work runs on its own core, as a NIC's
/// interrupt and NAPI poll do on a real machine.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NapiMode {
    /// The kernel's default: receive work runs where the frame was sent (GRO off).
    Inline,
    /// Each end's receive work in NAPI threads pinned to that end's core (GRO on).
    Threaded,
}

impl NapiMode {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Threaded => "threaded",
        }
    }
}

/// Arguments of `melange lab up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where each end's receive work runs (see `NapiMode`): `inline` in the sender's softirq
    /// (the kernel's default), or `threaded` in NAPI threads pinned to each host's core, which
    /// models two machines.
    #[arg(long, value_enum, default_value_t = NapiMode::Inline)]
    pub napi: NapiMode,
    /// threaded: the client host's core (mlg-a's NAPI threads run there).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// threaded: the server host's core (mlg-b's NAPI threads run there).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
}

impl Default for UpArgs {
    fn default() -> Self {
        Self {
            napi: NapiMode::Inline,
            client_cpu: 1,
            server_cpu: 0,
        }
    }
}

/// Arguments of `melange lab status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `melange lab impair`.
#[derive(clap::Args, Debug)]
pub struct ImpairArgs {
    /// Percentage of packets of `--protocol` to drop (0 removes this namespace's rule for this
    /// direction).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100),
          required_unless_present = "clear", conflicts_with = "clear")]
    loss: Option<u8>,
    /// Which packets the loss applies to; ARP and ICMP are never dropped, so the lab stays
    /// reachable and `ping` keeps working.
    #[arg(long, value_enum, default_value_t = ImpairProtocol::Udp)]
    protocol: ImpairProtocol,
    /// Namespace whose veth end carries the rule.
    #[arg(long, value_enum, default_value_t = LabNs::MlgA)]
    ns: LabNs,
    /// Hook on that veth end: `egress` (packets it sends) or `ingress` (packets it receives).
    #[arg(long, value_enum, default_value_t = Direction::Egress)]
    direction: Direction,
    /// Remove every impairment in the lab (both namespaces, both directions).
    #[arg(long)]
    clear: bool,
}

/// The packets an impairment drops.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImpairProtocol {
    /// UDP datagrams.
    Udp,
    /// TCP segments.
    Tcp,
    /// UDP and TCP.
    Any,
}

impl ImpairProtocol {
    /// The nftables match.
    fn nft_match(self) -> &'static str {
        match self {
            Self::Udp => "meta l4proto udp",
            Self::Tcp => "meta l4proto tcp",
            Self::Any => "meta l4proto { tcp, udp }",
        }
    }
    /// The name people read.
    fn name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Any => "UDP and TCP",
        }
    }
}

/// A lab namespace, as a command-line value.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LabNs {
    /// The client namespace.
    #[value(name = "mlg-a")]
    MlgA,
    /// The server namespace.
    #[value(name = "mlg-b")]
    MlgB,
}

impl LabNs {
    fn end(self) -> End {
        match self {
            LabNs::MlgA => END_A,
            LabNs::MlgB => END_B,
        }
    }
}

/// Which way through the veth end the impairment applies.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Packets received by the veth end (after its XDP program).
    Ingress,
    /// Packets sent by the veth end (before the peer's XDP program; not AF_XDP transmissions).
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Runs a lab subcommand.
pub fn run(command: LabCommand) -> Result<()> {
    if let LabCommand::Up(args) = &command {
        let online = melange_sys::cpu::online_cpus();
        for (flag, cpu) in [
            ("client-cpu", args.client_cpu),
            ("server-cpu", args.server_cpu),
        ] {
            if cpu >= online {
                bail!(
                    "--{flag} {cpu}: this machine has {online} core(s), numbered 0 to {}",
                    online - 1
                );
            }
        }
    }
    require_root(match &command {
        LabCommand::Up(_) => ("up", "to create the namespaces and the veth pair"),
        LabCommand::Down => ("down", "to delete the namespaces"),
        LabCommand::Status(_) => ("status", "to look inside the lab's namespaces"),
        LabCommand::Impair(_) => ("impair", "to change nftables rules inside the namespaces"),
    })?;
    let tools = Tools::find()?;
    let _lock = lock()?;
    match command {
        LabCommand::Up(args) => up(&tools, &args),
        LabCommand::Down => down(&tools),
        LabCommand::Status(args) => {
            let status = status(&tools)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        LabCommand::Impair(args) => impair(&tools, &args),
    }
}

// ---------------------------------------------------------------------------------------------
// Preconditions: privileges, tools, the lock.

/// Fails unless the process has CAP_NET_ADMIN and CAP_SYS_ADMIN (`ip netns add` mounts a bind
/// mount). Reads the effective capability set from /proc rather than comparing the uid with 0,
/// so that a capable non-root user and a root user without capabilities (a restricted container)
/// both get the right answer.
fn require_root((command, why): (&str, &str)) -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let text = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = text
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let needed = (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN);
    if caps & needed != needed {
        bail!(
            "melange lab {command} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) {why}; run it as root, e.g. `sudo melange lab {command}`"
        );
    }
    Ok(())
}

/// Serializes lab commands across processes. The lock is released when the file is dropped.
fn lock() -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("opening the lab lock {LOCK_PATH}"))?;
    file.lock()
        .with_context(|| format!("locking {LOCK_PATH}"))?;
    Ok(file)
}

/// The external programs the lab drives, resolved to full paths once.
struct Tools {
    ip: PathBuf,
    nft: Option<PathBuf>,
    ethtool: Option<PathBuf>,
}

/// Finds `name` on PATH, then in the sbin directories a non-login root shell may lack.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn missing_tool(name: &str) -> anyhow::Error {
    anyhow!("{name} not found: run scripts/setup.sh")
}

impl Tools {
    fn find() -> Result<Tools> {
        Ok(Tools {
            ip: which("ip").ok_or_else(|| missing_tool("ip"))?,
            nft: which("nft"),
            ethtool: which("ethtool"),
        })
    }

    fn nft(&self) -> Result<&Path> {
        self.nft.as_deref().ok_or_else(|| missing_tool("nft"))
    }

    /// Runs `ip ARGS`; fails with the command line and its stderr.
    fn ip(&self, args: &[&str]) -> Result<String> {
        run_tool(&self.ip, args, None)
    }

    /// Runs `ip netns exec NS PROGRAM ARGS`, feeding `stdin` if given.
    fn exec_in(
        &self,
        ns: &str,
        program: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        let program = program
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 tool path {program:?}"))?;
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run_tool(&self.ip, &full, stdin)
    }

    /// Runs an nftables script atomically (`nft -f -`) inside `ns`.
    fn nft_script(&self, ns: &str, script: &str) -> Result<()> {
        self.exec_in(ns, self.nft()?, &["-f", "-"], Some(script))
            .map(drop)
    }
}

fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let line = format!("{} {}", program.display(), args.join(" "));
    tracing::debug!("running {line}");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    if let Some(text) = stdin {
        // The pipe exists because stdin was set to Stdio::piped() just above; dropping it sends EOF.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {line}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {line}"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Observation: what exists now.

fn ns_exists(ns: &str) -> bool {
    // `ip netns add` bind-mounts the namespace here; this is exactly what `ip netns list` reads.
    Path::new("/run/netns").join(ns).exists()
}

/// `ip -d -j addr show dev DEV` in `ns` (or the current namespace), or None if there is no such device.
fn link_json(tools: &Tools, ns: Option<&str>, dev: &str) -> Result<Option<Value>> {
    if let Some(ns) = ns {
        if !ns_exists(ns) {
            return Ok(None);
        }
    }
    // `ip link show dev X` fails for a missing X; list everything and pick by name instead, so that
    // a real failure (a broken namespace) is not mistaken for absence.
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-d", "-j", "addr", "show"]);
    let text = tools.ip(&args)?;
    let links: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing `ip -j addr` output: {text}"))?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .find(|link| link["ifname"].as_str() == Some(dev))
        .cloned())
}

/// What `status` reports about the lab.
#[derive(Debug, Serialize)]
struct LabStatus {
    /// Both namespaces exist and both veth ends are up with the right addresses and queue counts.
    ready: bool,
    namespaces: Vec<NamespaceStatus>,
}

/// One namespace of the lab.
#[derive(Debug, Serialize)]
struct NamespaceStatus {
    name: &'static str,
    /// "client" or "server".
    role: &'static str,
    exists: bool,
    /// The veth end in this namespace; None when it is missing.
    interface: Option<InterfaceStatus>,
    /// Active impairments in this namespace; None when nft is not installed, so it is unknown.
    impairments: Option<Vec<Impairment>>,
}

/// One veth end.
#[derive(Debug, Serialize)]
struct InterfaceStatus {
    name: String,
    ifindex: u64,
    /// The ifindex of the peer, in the peer's namespace.
    peer_ifindex: Option<u64>,
    kind: Option<String>,
    operstate: String,
    mac: String,
    /// IPv4 addresses with prefix length.
    addresses: Vec<String>,
    rx_queues: u64,
    tx_queues: u64,
    /// The attached XDP program, if any.
    xdp: Option<XdpStatus>,
    /// ethtool's `tx-checksumming`; None when ethtool is missing.
    tx_checksum_offload: Option<bool>,
    /// Where the end's receive work runs; None when it could not be read.
    napi: Option<NapiStatus>,
}

/// An end's NAPI placement, read back from the kernel.
#[derive(Debug, Serialize)]
struct NapiStatus {
    /// `threaded` when `/sys/class/net/DEV/threaded` is 1, else `inline`.
    mode: NapiMode,
    /// The end's NAPI threads (threaded mode) and the cores each may run on.
    threads: Vec<NapiThread>,
}

/// One NAPI poller thread.
#[derive(Debug, Serialize)]
struct NapiThread {
    /// Its name, `napi/<dev>-<id>` (truncated by the kernel to 15 characters).
    name: String,
    /// Its pid.
    pid: u32,
    /// `Cpus_allowed_list`, e.g. `0`.
    cpus: String,
}

/// An XDP attachment, as `ip -j link` reports it.
#[derive(Debug, Serialize)]
struct XdpStatus {
    /// "native", "generic", "offload" or "multi".
    mode: String,
    prog_ids: Vec<u64>,
}

/// One impairment rule.
#[derive(Debug, Serialize)]
struct Impairment {
    /// The nftables family and chain, e.g. `netdev egress`.
    family: String,
    hook: String,
    device: &'static str,
    loss_pct: u64,
    /// The protocols the rule drops, as nftables names them (`udp`, `tcp`, `tcp,udp`).
    protocols: String,
    /// Packets the rule has dropped so far.
    dropped_packets: u64,
}

impl InterfaceStatus {
    fn parse(link: &Value) -> InterfaceStatus {
        let addresses = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|addr| addr["family"] == "inet")
            .filter_map(|addr| {
                Some(format!(
                    "{}/{}",
                    addr["local"].as_str()?,
                    addr["prefixlen"].as_u64()?
                ))
            })
            .collect();
        let xdp = link.get("xdp").map(|xdp| {
            let mode = match xdp["mode"].as_u64() {
                Some(1) => "native",
                Some(2) => "generic",
                Some(3) => "offload",
                Some(4) => "multi",
                _ => "unknown",
            };
            let mut prog_ids: Vec<u64> = xdp["attached"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|attached| attached["prog"]["id"].as_u64())
                .collect();
            if prog_ids.is_empty() {
                prog_ids.extend(xdp["prog"]["id"].as_u64());
            }
            XdpStatus {
                mode: mode.to_string(),
                prog_ids,
            }
        });
        InterfaceStatus {
            name: link["ifname"].as_str().unwrap_or_default().to_string(),
            ifindex: link["ifindex"].as_u64().unwrap_or_default(),
            peer_ifindex: link["link_index"].as_u64(),
            kind: link["linkinfo"]["info_kind"].as_str().map(str::to_string),
            operstate: link["operstate"].as_str().unwrap_or("UNKNOWN").to_string(),
            mac: link["address"].as_str().unwrap_or_default().to_string(),
            addresses,
            rx_queues: link["num_rx_queues"].as_u64().unwrap_or_default(),
            tx_queues: link["num_tx_queues"].as_u64().unwrap_or_default(),
            xdp,
            tx_checksum_offload: None,
            napi: None,
        }
    }

    /// Whether this end is configured as `up` leaves it (the peer is checked separately).
    fn is_ready(&self, end: End) -> bool {
        self.kind.as_deref() == Some("veth")
            && self.operstate == "UP"
            && self.addresses == [end.addr]
            && self.rx_queues == QUEUE_COUNT
            && self.tx_queues == QUEUE_COUNT
    }
}

/// ethtool's `tx-checksumming` for `dev` in `ns`, or None if ethtool is missing or says nothing.
fn tx_checksum_offload(tools: &Tools, ns: &str, dev: &str) -> Option<bool> {
    let ethtool = tools.ethtool.as_deref()?;
    let text = tools.exec_in(ns, ethtool, &["-k", dev], None).ok()?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("tx-checksumming:"))?;
    Some(value.trim().starts_with("on"))
}

/// The impairment rules in `ns`, parsed from `nft -j list ruleset`.
fn impairments(tools: &Tools, ns: &str) -> Result<Vec<Impairment>> {
    let nft = tools.nft()?;
    let text = tools.exec_in(ns, nft, &["-j", "list", "ruleset"], None)?;
    let ruleset: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing nft JSON: {text}"))?;
    let end = ENDS
        .iter()
        .find(|end| end.ns == ns)
        .expect("impairments is only called for lab namespaces");
    let mut found = Vec::new();
    for item in ruleset["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["table"] != IMPAIR_TABLE {
            continue;
        }
        // A drop rule with a `numgen < N` match drops N%; one without drops everything.
        let mut loss_pct = None;
        let mut chance_pct = None;
        let mut dropped_packets = 0;
        let mut protocols = String::new();
        for expr in rule["expr"].as_array().into_iter().flatten() {
            let matched = &expr["match"];
            if matched["left"]["meta"]["key"] == "l4proto" {
                protocols = match &matched["right"] {
                    Value::String(p) => p.clone(),
                    other => other["set"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                };
            }
            if matched["left"].get("numgen").is_some() && matched["op"] == "<" {
                chance_pct = matched["right"].as_u64();
            }
            if let Some(packets) = expr["counter"]["packets"].as_u64() {
                dropped_packets = packets;
            }
            if expr.get("drop").is_some() {
                loss_pct = Some(chance_pct.unwrap_or(100));
            }
        }
        if let Some(loss_pct) = loss_pct {
            found.push(Impairment {
                family: rule["family"].as_str().unwrap_or_default().to_string(),
                hook: rule["chain"].as_str().unwrap_or_default().to_string(),
                device: end.dev,
                loss_pct,
                protocols,
                dropped_packets,
            });
        }
    }
    Ok(found)
}

fn status(tools: &Tools) -> Result<LabStatus> {
    let mut namespaces = Vec::new();
    for end in ENDS {
        let exists = ns_exists(end.ns);
        let mut interface = None;
        let mut impairs = None;
        if exists {
            if let Some(link) = link_json(tools, Some(end.ns), end.dev)? {
                let mut parsed = InterfaceStatus::parse(&link);
                parsed.tx_checksum_offload = tx_checksum_offload(tools, end.ns, end.dev);
                parsed.napi = napi_status(tools, end).ok();
                interface = Some(parsed);
            }
            impairs = match tools.nft {
                Some(_) => Some(impairments(tools, end.ns)?),
                None => None,
            };
        }
        namespaces.push(NamespaceStatus {
            name: end.ns,
            role: end.role,
            exists,
            interface,
            impairments: impairs,
        });
    }
    let ready = match (&namespaces[0].interface, &namespaces[1].interface) {
        (Some(a), Some(b)) => {
            a.is_ready(END_A)
                && b.is_ready(END_B)
                && a.peer_ifindex == Some(b.ifindex)
                && b.peer_ifindex == Some(a.ifindex)
        }
        _ => false,
    };
    Ok(LabStatus { ready, namespaces })
}

impl LabStatus {
    fn render(&self) -> String {
        let mut out = String::new();
        let verdict = if self.ready {
            "ready"
        } else {
            "not ready (run `melange lab up`)"
        };
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "lab: {verdict}");
        for ns in &self.namespaces {
            if !ns.exists {
                let _ = writeln!(out, "{} ({}): absent", ns.name, ns.role);
                continue;
            }
            let _ = writeln!(out, "{} ({}): present", ns.name, ns.role);
            match &ns.interface {
                None => {
                    let _ = writeln!(out, "  interface: missing");
                }
                Some(i) => {
                    let addresses = if i.addresses.is_empty() {
                        "no IPv4 address".to_string()
                    } else {
                        i.addresses.join(", ")
                    };
                    let xdp = match &i.xdp {
                        None => "none".to_string(),
                        Some(x) => format!("{} mode, prog {:?}", x.mode, x.prog_ids),
                    };
                    let csum = match i.tx_checksum_offload {
                        Some(true) => "on",
                        Some(false) => "off",
                        None => "unknown (no ethtool)",
                    };
                    let napi = match &i.napi {
                        None => "unknown".to_string(),
                        Some(n) if n.threads.is_empty() => n.mode.name().to_string(),
                        Some(n) => format!(
                            "{} ({})",
                            n.mode.name(),
                            n.threads
                                .iter()
                                .map(|t| format!("{} pid {} on cpu {}", t.name, t.pid, t.cpus))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    let _ = writeln!(
                        out,
                        "  {} ({}, {}, mac {}): {}\n    queues: {} rx / {} tx\n    xdp: {}\n    tx checksum offload: {}\n    napi: {napi}",
                        i.name,
                        i.kind.as_deref().unwrap_or("?"),
                        i.operstate,
                        i.mac,
                        addresses,
                        i.rx_queues,
                        i.tx_queues,
                        xdp,
                        csum
                    );
                }
            }
            match &ns.impairments {
                None => {
                    let _ = writeln!(
                        out,
                        "  impairment: unknown (nft not found: run scripts/setup.sh)"
                    );
                }
                Some(list) if list.is_empty() => {
                    let _ = writeln!(out, "  impairment: none");
                }
                Some(list) => {
                    for imp in list {
                        let _ = writeln!(
                            out,
                            "  impairment: {}% {} loss on {} {} ({}), {} dropped so far",
                            imp.loss_pct,
                            imp.protocols.to_uppercase(),
                            imp.device,
                            imp.hook,
                            imp.family,
                            imp.dropped_packets
                        );
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// up

/// Why the veth pair must be rebuilt, or None if it is healthy.
fn veth_problem(a: Option<&InterfaceStatus>, b: Option<&InterfaceStatus>) -> Option<String> {
    let (a, b) = match (a, b) {
        (None, None) => return Some("missing".to_string()),
        (None, Some(_)) => return Some(format!("{} is missing", END_A.dev)),
        (Some(_), None) => return Some(format!("{} is missing", END_B.dev)),
        (Some(a), Some(b)) => (a, b),
    };
    for (i, end) in [(a, END_A), (b, END_B)] {
        if i.kind.as_deref() != Some("veth") {
            return Some(format!("{} is a {:?}, not a veth", end.dev, i.kind));
        }
        if i.rx_queues != QUEUE_COUNT || i.tx_queues != QUEUE_COUNT {
            return Some(format!(
                "{} has {} rx / {} tx queues, not {QUEUE_COUNT}",
                end.dev, i.rx_queues, i.tx_queues
            ));
        }
    }
    // Interface indexes are per namespace, so this could in principle match an unrelated pair;
    // together with the names and kinds above it is a strong enough check for a lab.
    if a.peer_ifindex != Some(b.ifindex) || b.peer_ifindex != Some(a.ifindex) {
        return Some(format!(
            "{} and {} are not each other's peers",
            END_A.dev, END_B.dev
        ));
    }
    None
}

fn up(tools: &Tools, args: &UpArgs) -> Result<()> {
    // Step 1: the namespaces. `ip netns add` creates a network namespace and pins it with a bind
    // mount under /run/netns, so it outlives this process and `ip netns exec` can enter it.
    for end in ENDS {
        if ns_exists(end.ns) {
            println!("lab: namespace {} ({}) already exists", end.ns, end.role);
        } else {
            tools.ip(&["netns", "add", end.ns])?;
            println!("lab: created namespace {} ({})", end.ns, end.role);
        }
    }

    // Step 2: the veth pair, created inside mlg-a with its peer placed straight into mlg-b, so no
    // half-moved pair is ever left in the root namespace. Both ends need the queue counts at
    // creation: a veth cannot change them later, so a pair with the wrong counts is rebuilt.
    let a = link_json(tools, Some(END_A.ns), END_A.dev)?.map(|l| InterfaceStatus::parse(&l));
    let b = link_json(tools, Some(END_B.ns), END_B.dev)?.map(|l| InterfaceStatus::parse(&l));
    match veth_problem(a.as_ref(), b.as_ref()) {
        None => println!(
            "lab: veth pair {} <-> {} already exists",
            END_A.dev, END_B.dev
        ),
        Some(problem) => {
            let removed = remove_veths(tools)?;
            let queues = QUEUE_COUNT.to_string();
            tools.ip(&[
                "-n",
                END_A.ns,
                "link",
                "add",
                END_A.dev,
                "numrxqueues",
                &queues,
                "numtxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                END_B.dev,
                "netns",
                END_B.ns,
                "numrxqueues",
                &queues,
                "numtxqueues",
                &queues,
            ])?;
            let verb = if removed == 0 { "created" } else { "rebuilt" };
            println!(
                "lab: {verb} veth pair {}/{} <-> {}/{} with {QUEUE_COUNT} rx and {QUEUE_COUNT} tx queues each (was: {problem})",
                END_A.ns, END_A.dev, END_B.ns, END_B.dev
            );
        }
    }

    for end in ENDS {
        // Step 3: loopback up. A fresh namespace has `lo` down, and local traffic (a server
        // talking to itself, `ping` of its own address) would fail in confusing ways.
        tools.ip(&["-n", end.ns, "link", "set", "dev", "lo", "up"])?;

        // Step 4: exactly one IPv4 address on the veth end. Stale addresses are removed, not
        // just added to, so the kernel cannot pick the wrong source address.
        let link = link_json(tools, Some(end.ns), end.dev)?
            .ok_or_else(|| anyhow!("{} vanished from {} while setting it up", end.dev, end.ns))?;
        let current = InterfaceStatus::parse(&link).addresses;
        for stale in current.iter().filter(|addr| *addr != end.addr) {
            tools.ip(&["-n", end.ns, "addr", "del", stale, "dev", end.dev])?;
            println!("lab: removed stale address {stale} from {}", end.dev);
        }
        if current.iter().any(|addr| addr == end.addr) {
            println!("lab: {} already has {}", end.dev, end.addr);
        } else {
            tools.ip(&["-n", end.ns, "addr", "add", end.addr, "dev", end.dev])?;
            println!("lab: added {} to {}/{}", end.addr, end.ns, end.dev);
        }

        // Step 5: link up. Nothing else is configured: ARP stays dynamic and offloads stay at
        // their defaults (see the module docs); step 6 only records them.
        tools.ip(&["-n", end.ns, "link", "set", "dev", end.dev, "up"])?;

        // Step 5b: keep each TCP flow on its transmit queue. On veth the peer's receive queue
        // is the sender's transmit queue, which Linux picks from the socket's flow hash, and
        // Linux draws a new hash after a retransmission timeout (`net.core.txrehash`, for path
        // diversity). A flow would then move to the queue of another Melange engine, one that
        // does not hold the connection and answers with a RST. A NIC's RSS hash of the
        // 4-tuple never moves a flow, which is what the lab stands in for.
        tools.exec_in(
            end.ns,
            Path::new("sysctl"),
            &["-q", "-w", "net.core.txrehash=0"],
            None,
        )?;

        // Step 6: record the TX checksum offload setting, which decides whether UDP arrives at
        // the peer with a partial checksum.
        match tx_checksum_offload(tools, end.ns, end.dev) {
            Some(on) => println!("lab: {} tx checksum offload is {} (left at the default)", end.dev, if on { "on" } else { "off" }),
            None => println!("lab: {} tx checksum offload not recorded (ethtool not found: run scripts/setup.sh)", end.dev),
        }
    }

    // Step 7: wait for both ends to report carrier. Setting a link up returns before the kernel's
    // link watcher marks it operationally UP (up to a second later), and a benchmark started in
    // that window would see its first packets dropped.
    let deadline = Instant::now() + UP_WAIT_MAX;
    loop {
        let status = status(tools)?;
        if status.ready {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the lab is still not ready {UP_WAIT_MAX:?} after `up`:\n{}",
                status.render()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Step 8: where each end's receive work runs (see `NapiMode`). After the links are up:
    // setting a link down and up recreates its NAPI threads, unpinned.
    for (end, cpu) in [(END_A, args.client_cpu), (END_B, args.server_cpu)] {
        set_napi(tools, end, args.napi, cpu)?;
    }
    println!(
        "lab: up: {}/{} {} <-> {} {}/{}, napi {}",
        END_A.ns,
        END_A.dev,
        END_A.addr,
        END_B.addr,
        END_B.ns,
        END_B.dev,
        args.napi.name()
    );
    Ok(())
}

/// The `SCHED_FIFO` priority of threaded NAPI pollers: that of PREEMPT_RT's interrupt threads.
const NAPI_THREAD_PRIORITY: i32 = 50;

/// How long `up` waits for an end's NAPI threads to appear after switching it to threaded.
const NAPI_THREADS_WAIT_MAX: Duration = Duration::from_secs(3);

/// Puts `end`'s receive work where `mode` says; in threaded mode pins its NAPI threads to
/// `cpu`.
fn set_napi(tools: &Tools, end: End, mode: NapiMode, cpu: usize) -> Result<()> {
    let ethtool = tools.ethtool.as_deref().ok_or_else(|| {
        anyhow!("ethtool not found, and `lab up` needs it to set GRO for the NAPI mode: run scripts/setup.sh")
    })?;
    let sh = Path::new("/bin/sh");
    let threaded_path = format!("/sys/class/net/{}/threaded", end.dev);
    match mode {
        NapiMode::Inline => {
            // Only an end that has NAPI instances takes the write (the kernel answers EIO
            // otherwise); one without them is inline already.
            if napi_status(tools, end)?.mode == NapiMode::Threaded {
                tools.exec_in(
                    end.ns,
                    sh,
                    &["-c", &format!("echo 0 > {threaded_path}")],
                    None,
                )?;
            }
            tools.exec_in(end.ns, ethtool, &["-K", end.dev, "gro", "off"], None)?;
            println!(
                "lab: {} napi inline (GRO off: receive work runs in the sender's softirq)",
                end.dev
            );
        }
        NapiMode::Threaded => {
            // veth has NAPI (and so NAPI threads) only with GRO on or an XDP program attached;
            // GRO on keeps it there whether or not a server attaches XDP later.
            tools.exec_in(end.ns, ethtool, &["-K", end.dev, "gro", "on"], None)?;
            tools.exec_in(
                end.ns,
                sh,
                &["-c", &format!("echo 1 > {threaded_path}")],
                None,
            )?;
            let deadline = Instant::now() + NAPI_THREADS_WAIT_MAX;
            let threads = loop {
                let threads = napi_threads(end.dev)?;
                if threads.len() >= QUEUE_COUNT as usize {
                    break threads;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{} has {} NAPI thread(s) {NAPI_THREADS_WAIT_MAX:?} after switching to threaded NAPI, expected {QUEUE_COUNT} (one per receive queue); does this kernel support /sys/class/net/DEV/threaded?",
                        end.dev,
                        threads.len()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            for (pid, name) in &threads {
                melange_sys::cpu::pin_thread(*pid, cpu)
                    .with_context(|| format!("pinning {name} (pid {pid}) to cpu {cpu}"))?;
                // On a real host the NIC's interrupt preempts whatever runs on its core; a
                // NAPI thread of ordinary priority would instead wait for a busy-polling
                // server's time slice to end. Real-time priority gives it the interrupt's
                // place (as PREEMPT_RT kernels run threaded interrupt handlers).
                melange_sys::cpu::set_fifo_priority(*pid, NAPI_THREAD_PRIORITY).with_context(
                    || {
                        format!(
                            "giving {name} (pid {pid}) SCHED_FIFO priority {NAPI_THREAD_PRIORITY}"
                        )
                    },
                )?;
            }
            println!(
                "lab: {} napi threaded: {} pinned to cpu {cpu} (the {} host's core), SCHED_FIFO {NAPI_THREAD_PRIORITY} like an interrupt",
                end.dev,
                threads
                    .iter()
                    .map(|(pid, name)| format!("{name} (pid {pid})"))
                    .collect::<Vec<_>>()
                    .join(", "),
                end.role
            );
        }
    }
    Ok(())
}

/// The NAPI threads of `dev`: kernel threads named `napi/<dev>-<id>`, as (pid, name).
fn napi_threads(dev: &str) -> Result<Vec<(u32, String)>> {
    let prefix = format!("napi/{dev}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read; that is not an error.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if comm.starts_with(&prefix) {
            found.push((pid, comm.to_string()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads back `end`'s NAPI mode and its threads' cores.
fn napi_status(tools: &Tools, end: End) -> Result<NapiStatus> {
    let text = tools.exec_in(
        end.ns,
        Path::new("/bin/cat"),
        &[&format!("/sys/class/net/{}/threaded", end.dev)],
        None,
    )?;
    let mode = if text.trim() == "1" || text.trim() == "enabled" {
        NapiMode::Threaded
    } else {
        NapiMode::Inline
    };
    let mut threads = Vec::new();
    for (pid, name) in napi_threads(end.dev)? {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        threads.push(NapiThread { name, pid, cpus });
    }
    Ok(NapiStatus { mode, threads })
}

/// Deletes every `mlg-va`/`mlg-vb` in the root namespace and the lab namespaces, then waits until
/// none is left. Returns how many it deleted.
///
/// Links can vanish underneath this function: deleting one end of a veth deletes its peer, and
/// `ip netns del` returns before the kernel has torn the namespace down (the cleanup runs later
/// in a workqueue and takes the veth ends with it). So a failed delete of a link that has since
/// disappeared counts as done, and a link still present after the deletes (a namespace still
/// being cleaned up) is waited for: creating a new pair with the same name would fail.
fn remove_veths(tools: &Tools) -> Result<usize> {
    let mut removed = 0;
    for ns in [None, Some(NS_A), Some(NS_B)] {
        for dev in [END_A.dev, END_B.dev] {
            if link_json(tools, ns, dev)?.is_none() {
                continue;
            }
            let deleted = match ns {
                Some(ns) => tools.ip(&["-n", ns, "link", "del", "dev", dev]),
                None => tools.ip(&["link", "del", "dev", dev]),
            };
            match deleted {
                Ok(_) => {
                    println!(
                        "lab: deleted {dev} from {}",
                        ns.unwrap_or("the root namespace")
                    );
                    removed += 1;
                }
                // Gone in the meantime (its peer or its namespace went first): the goal is met.
                Err(_) if link_json(tools, ns, dev)?.is_none() => {}
                Err(error) => return Err(error),
            }
        }
    }
    let deadline = Instant::now() + UP_WAIT_MAX;
    loop {
        let mut left = Vec::new();
        for ns in [None, Some(NS_A), Some(NS_B)] {
            for dev in [END_A.dev, END_B.dev] {
                if link_json(tools, ns, dev)?.is_some() {
                    left.push(format!("{}/{dev}", ns.unwrap_or("root")));
                }
            }
        }
        if left.is_empty() {
            return Ok(removed);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} still exist {UP_WAIT_MAX:?} after being deleted (a namespace still being torn down?)",
                left.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// down

fn down(tools: &Tools) -> Result<()> {
    let mut anything = false;
    for end in ENDS {
        if !ns_exists(end.ns) {
            continue;
        }
        anything = true;
        // A process still inside the namespace keeps it alive after `ip netns del`, with the veth
        // and the nftables table inside it; so those are removed explicitly first.
        let pids = tools.ip(&["netns", "pids", end.ns])?;
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            println!(
                "lab: warning: processes {} still run in {}; they keep it alive until they exit",
                pids.join(" "),
                end.ns
            );
        }
        if tools.nft.is_some() {
            clear_impairments(tools, end.ns)?;
        }
    }
    if remove_veths(tools)? > 0 {
        anything = true;
    }
    for end in ENDS {
        if ns_exists(end.ns) {
            tools.ip(&["netns", "del", end.ns])?;
            println!("lab: deleted namespace {}", end.ns);
        }
    }
    if !anything {
        println!("lab: nothing to remove");
    }
    println!("lab: down");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// impair

/// Deletes the impairment tables in `ns` (both families). `add` before `delete` makes it
/// idempotent: nft fails on deleting a missing table, never on adding an existing one.
fn clear_impairments(tools: &Tools, ns: &str) -> Result<()> {
    let had = !impairments(tools, ns)?.is_empty();
    let script = format!(
        "add table netdev {IMPAIR_TABLE}\ndelete table netdev {IMPAIR_TABLE}\n\
         add table inet {IMPAIR_TABLE}\ndelete table inet {IMPAIR_TABLE}\n"
    );
    tools.nft_script(ns, &script)?;
    if had {
        println!("lab: removed impairment in {ns}");
    }
    Ok(())
}

/// The nftables script that gives `end` a `direction` chain dropping `loss_pct`% of UDP, replacing
/// any rule it had. `netdev` is the family with per-device ingress and egress hooks.
fn impair_script(end: End, direction: Direction, loss_pct: u8, protocol: ImpairProtocol) -> String {
    let hook = direction.name();
    let mut script = format!(
        "add table netdev {IMPAIR_TABLE}\n\
         add chain netdev {IMPAIR_TABLE} {hook} {{ type filter hook {hook} device \"{dev}\" priority 0; policy accept; }}\n\
         flush chain netdev {IMPAIR_TABLE} {hook}\n",
        dev = end.dev
    );
    if loss_pct == 0 {
        let _ = writeln!(script, "delete chain netdev {IMPAIR_TABLE} {hook}");
    } else {
        let _ = writeln!(
            script,
            "add rule netdev {IMPAIR_TABLE} {hook} {}",
            drop_rule(loss_pct, protocol)
        );
    }
    script
}

/// The fallback for kernels without the netdev egress hook: an `inet` `output` chain matching the
/// interface sees the same locally generated packets (and, like egress, not AF_XDP transmissions).
fn impair_script_output(end: End, loss_pct: u8, protocol: ImpairProtocol) -> String {
    let mut script = format!(
        "add table inet {IMPAIR_TABLE}\n\
         add chain inet {IMPAIR_TABLE} output {{ type filter hook output priority 0; policy accept; }}\n\
         flush chain inet {IMPAIR_TABLE} output\n"
    );
    if loss_pct == 0 {
        let _ = writeln!(script, "delete chain inet {IMPAIR_TABLE} output");
    } else {
        let _ = writeln!(
            script,
            "add rule inet {IMPAIR_TABLE} output oifname \"{}\" {}",
            end.dev,
            drop_rule(loss_pct, protocol)
        );
    }
    script
}

fn drop_rule(loss_pct: u8, protocol: ImpairProtocol) -> String {
    // UDP and/or TCP only, so that ARP and ICMP (ping) keep working under loss. `numgen random` is uniform
    // per packet, which is Bernoulli loss: no bursts.
    // nft's `numgen random mod 100` yields 0..=99, and it rejects `< 100` as out of range; total
    // loss is therefore a rule without the random match.
    let chance = if loss_pct >= 100 {
        String::new()
    } else {
        format!("numgen random mod 100 < {loss_pct} ")
    };
    let proto = protocol.nft_match();
    format!("{proto} {chance}counter drop comment \"melange lab: {loss_pct}% loss\"")
}

fn impair(tools: &Tools, args: &ImpairArgs) -> Result<()> {
    tools.nft()?;
    if args.clear {
        for end in ENDS {
            if ns_exists(end.ns) {
                clear_impairments(tools, end.ns)?;
            }
        }
        println!("lab: impairment cleared");
        return Ok(());
    }
    let loss_pct = args
        .loss
        .expect("clap requires --loss unless --clear is given");
    let end = args.ns.end();
    if link_json(tools, Some(end.ns), end.dev)?.is_none() {
        bail!(
            "{}/{} does not exist: run `melange lab up` first",
            end.ns,
            end.dev
        );
    }
    let placed = match tools.nft_script(
        end.ns,
        &impair_script(end, args.direction, loss_pct, args.protocol),
    ) {
        Ok(()) => format!(
            "netdev {} hook on {}/{}",
            args.direction.name(),
            end.ns,
            end.dev
        ),
        Err(err) if args.direction == Direction::Egress => {
            println!("lab: the netdev egress hook was refused ({err:#}); falling back to an inet output chain");
            tools.nft_script(end.ns, &impair_script_output(end, loss_pct, args.protocol))?;
            format!(
                "inet output hook in {} for packets leaving {}",
                end.ns, end.dev
            )
        }
        Err(err) => return Err(err),
    };
    if loss_pct == 0 {
        println!("lab: removed the {placed}");
        return Ok(());
    }
    println!(
        "lab: dropping {loss_pct}% of {} packets at the {placed}",
        args.protocol.name()
    );

    // Say what this placement cannot see; see the module docs for the measurements.
    let peer = if end.ns == END_A.ns { END_B } else { END_A };
    let xdp_here = link_json(tools, Some(end.ns), end.dev)?.is_some_and(|l| l.get("xdp").is_some());
    match args.direction {
        Direction::Egress => {
            println!(
                "lab: this drops packets from kernel sockets in {} before {}'s XDP program or sockets see them; \
                 AF_XDP transmissions bypass it (for an AF_XDP sender and a kernel-socket receiver use \
                 --ns {} --direction ingress; AF_XDP to XDP traffic cannot be impaired with nftables)",
                end.ns, peer.ns, peer.ns
            );
            if xdp_here {
                println!(
                    "lab: warning: {} has an XDP program attached, so an AF_XDP sender may be using it: its packets are NOT impaired",
                    end.dev
                );
            }
        }
        Direction::Ingress => {
            println!(
                "lab: this drops packets only after {}'s XDP program has passed them up; packets it redirects to \
                 AF_XDP or drops are never seen here (for a kernel-socket sender use --ns {} --direction egress)",
                end.dev, peer.ns
            );
            if xdp_here {
                println!(
                    "lab: warning: {} has an XDP program attached: packets it redirects to AF_XDP are NOT impaired",
                    end.dev
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impair_script_replaces_the_rule() {
        let script = impair_script(END_A, Direction::Egress, 30, ImpairProtocol::Udp);
        assert!(script.contains("hook egress device \"mlg-va\""));
        assert!(script.contains("flush chain netdev melange_impair egress"));
        assert!(script.contains("numgen random mod 100 < 30 counter drop"));
        let script = impair_script(END_A, Direction::Egress, 100, ImpairProtocol::Udp);
        assert!(script.contains("udp counter drop") && !script.contains("numgen"));
        let script = impair_script(END_B, Direction::Ingress, 0, ImpairProtocol::Udp);
        assert!(script.contains("delete chain netdev melange_impair ingress"));
        assert!(!script.contains("drop"));
    }

    #[test]
    fn parses_ip_json() {
        let link: Value = serde_json::from_str(
            r#"{"ifindex":2,"link_index":3,"ifname":"mlg-va","operstate":"UP","address":"d6:dd:73:6d:50:95",
                "linkinfo":{"info_kind":"veth"},"num_tx_queues":2,"num_rx_queues":2,
                "xdp":{"mode":1,"prog":{"id":97},"attached":[{"mode":1,"prog":{"id":97}}]},
                "addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":24},
                             {"family":"inet6","local":"fe80::1","prefixlen":64}]}"#,
        )
        .expect("valid JSON literal");
        let parsed = InterfaceStatus::parse(&link);
        assert_eq!(parsed.addresses, ["10.77.0.1/24"]);
        assert!(parsed.is_ready(END_A));
        assert_eq!(parsed.peer_ifindex, Some(3));
        let xdp = parsed.xdp.expect("xdp key present");
        assert_eq!(
            (xdp.mode.as_str(), xdp.prog_ids.as_slice()),
            ("native", &[97][..])
        );
    }

    #[test]
    fn veth_problems_are_named() {
        assert_eq!(veth_problem(None, None).as_deref(), Some("missing"));
    }
}
