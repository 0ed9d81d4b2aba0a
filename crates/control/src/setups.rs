//! The AF_XDP setups of Melange's commands, one function per role: a server on one port
//! (`echo`, `sink`) and a TCP client (`loadgen --protocol tcp`, `source`).
//!
//! Each role's [`XdpSetup`] is a handful of facts read from the interface (its address, MTU
//! and queues, the peer's MAC from the kernel's neighbour table) and a few sizing rules (how
//! many ports, connections and UMEM frames a client needs). Every command of a role builds it
//! here, so the lab runs `melange source` exactly as it runs the load generator, and a fix to
//! one (a queue warning, an MSS rule) reaches both. The alternative, each command assembling
//! its own, had already produced two copies that differed in their error messages.

use crate::engines::{check_on_link, interface_address, kernel_neighbor, XdpSetup, XdpTcp};
use crate::filters::PortRange;
use anyhow::{anyhow, Context, Result};
use melange_runtime::IdlePolicy;
use melange_sys::bpf::XdpMode;
use std::net::Ipv4Addr;

/// UMEM frames of a TCP server engine: room for the replies of tens of thousands of
/// connections waiting for their acknowledgements (64 MiB).
pub const TCP_SERVER_UMEM_FRAMES: u32 = 32_768;

/// Where and how a server runs on AF_XDP.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    /// The interface, e.g. `mlg-vb`.
    pub interface: String,
    /// The address asked for with `flag`; `None` (or the interface's own) uses the
    /// interface's.
    pub addr: Option<Ipv4Addr>,
    /// The flag that named `addr`, for messages.
    pub flag: &'static str,
    /// The port served.
    pub port: u16,
    /// TCP (Melange's own) rather than UDP.
    pub tcp: bool,
    /// Queues to serve (empty: all).
    pub queues: Vec<u32>,
    /// Engine batch size.
    pub batch: usize,
    /// Cores for the engines.
    pub cpus: Option<Vec<usize>>,
    /// Idle policy.
    pub idle: IdlePolicy,
    /// Native or generic XDP.
    pub mode: XdpMode,
}

/// The setup of a server on one port. TCP servers get Melange's TCP with the default table
/// and [`TCP_SERVER_UMEM_FRAMES`].
pub fn server_setup(plan: &ServerPlan) -> Result<XdpSetup> {
    let (addr, prefix_len) = interface_address(&plan.interface, plan.addr, plan.flag)?;
    Ok(XdpSetup {
        interface: plan.interface.clone(),
        addr,
        prefix_len,
        queues: plan.queues.clone(),
        ports: PortRange::single(plan.port),
        umem_frames: plan.tcp.then_some(TCP_SERVER_UMEM_FRAMES),
        tcp: plan.tcp.then(|| XdpTcp {
            connections_max: melange_engine::tcp::CONNECTIONS_DEFAULT,
            conn: melange_tcp::conn::ConnConfig::default(),
            ephemeral_ports: (plan.port, plan.port),
        }),
        static_arp: Vec::new(),
        batch: plan.batch,
        cpus: plan.cpus.clone(),
        idle: plan.idle,
        mode: plan.mode,
    })
}

/// Where and how a TCP client runs on AF_XDP, and what it needs room for.
#[derive(Debug, Clone)]
pub struct TcpClientPlan {
    /// The interface, e.g. `mlg-va`.
    pub interface: String,
    /// The local address asked for with `--bind` (unspecified or `None`: the interface's).
    pub bind: Option<Ipv4Addr>,
    /// The server; it must be on the interface's subnet and answer ARP.
    pub target: Ipv4Addr,
    /// Engines, one queue each from queue 0.
    pub engines: usize,
    /// First local port (`--local-port`); engine `i` opens from its own slice of
    /// `ports_per_engine` ports after it.
    pub first_port: u16,
    /// Local ports per engine: the connections it keeps open plus the ports that wait in
    /// TIME-WAIT (the client closes first, so it holds them).
    pub ports_per_engine: usize,
    /// Connection slots per engine (TIME-WAIT included).
    pub connections_max: usize,
    /// UMEM frames per engine: the app's buffers wait in frames until acknowledged.
    pub umem_frames: u32,
    /// TIME-WAIT's duration, when not the default 60 s (2 MSL).
    pub time_wait_ns: Option<u64>,
    /// Cores for the engines.
    pub cpus: Option<Vec<usize>>,
    /// Idle policy.
    pub idle: IdlePolicy,
    /// Native or generic XDP.
    pub mode: XdpMode,
}

/// The setup of a TCP client: its address and subnet checked against the target, its local
/// port range steered to its engines, the server resolved through the kernel, and the MSS
/// from the interface's MTU. Warns when the interface has more receive queues than engines
/// (segments arriving on another queue reach the kernel, which resets them).
pub fn tcp_client_setup(plan: &TcpClientPlan) -> Result<XdpSetup> {
    let interface = plan.interface.as_str();
    let (bind, prefix) = interface_address(interface, plan.bind, "--bind")?;
    check_on_link(interface, bind, prefix, plan.target)?;
    let span = plan.ports_per_engine.max(1);
    let first = usize::from(plan.first_port);
    let last = first + span * plan.engines.max(1) - 1;
    if first == 0 || last > usize::from(u16::MAX) {
        return Err(anyhow!(
            "--local-port {first}: {} engine(s) need {span} local ports each, ports {first}..={last}, past 65535; give a lower --local-port",
            plan.engines
        ));
    }
    let server_mac = kernel_neighbor(plan.target)?;
    let queues = melange_sys::netdev::rx_queue_count(interface)
        .with_context(|| format!("queues of {interface}"))?;
    if queues > plan.engines {
        tracing::warn!(
            "{interface} has {queues} receive queues and the TCP client runs {} engine(s) from queue 0: segments the server sends that arrive on another queue go to the kernel, which resets those connections. Make the server send on one queue (in the lab: `ip netns exec mlg-b ethtool -L mlg-vb tx 1`) or give {interface} one receive queue",
            plan.engines
        );
    }
    let mtu = melange_sys::netdev::mtu(interface)
        .with_context(|| format!("interface {interface} (does it exist? `ip link` lists them)"))?;
    let mut conn = melange_tcp::conn::ConnConfig {
        mss: mtu.saturating_sub(40).min(1460) as u16,
        ..melange_tcp::conn::ConnConfig::default()
    };
    if let Some(ns) = plan.time_wait_ns {
        conn.time_wait_ns = ns;
    }
    // Each engine's ephemeral ports are its own slice of the filtered range; the XDP filter
    // steers the whole range (the kernel must not use these ports meanwhile: the lab's
    // namespace runs nothing else).
    Ok(XdpSetup {
        interface: plan.interface.clone(),
        addr: bind,
        prefix_len: prefix,
        queues: (0..plan.engines as u32).collect(),
        ports: PortRange::new(first as u16, last as u16)?,
        umem_frames: Some(plan.umem_frames),
        tcp: Some(XdpTcp {
            connections_max: plan.connections_max,
            conn,
            ephemeral_ports: (first as u16, (first + span - 1) as u16),
        }),
        static_arp: vec![(plan.target, server_mac)],
        batch: 64,
        cpus: plan.cpus.clone(),
        idle: plan.idle,
        mode: plan.mode,
    })
}
