//! `melange-baseline xdp-echo`: the benchmark's "driver limit", a minimal raw AF_XDP UDP echo.
//!
//! Arrakis measured its stack against the raw driver with no stack at all; this is that
//! measurement for Melange. Each received frame that is IPv4/UDP to our port is turned around in
//! place, in the UMEM frame it arrived in: Ethernet addresses swapped, IPv4 addresses swapped,
//! UDP ports swapped, and the UDP checksum recomputed in full. The same frame is then put on the
//! tx ring, so the payload is never copied in user space. There is no ARP, no ICMP, no socket
//! table and no timers: the XDP program steers only our UDP port to the socket and leaves ARP and
//! everything else to the kernel, which answers ARP for the interface address.
//!
//! Why the checksum is recomputed rather than updated incrementally: swapping source and
//! destination leaves the one's-complement sum unchanged, so a correct received checksum would
//! stay correct. But on veth the client's transmit checksum offload delivers a *partial*
//! checksum (only the pseudo-header sum), and forwarding it unchanged would hand the client a
//! datagram its kernel drops. A full sum over a 64-byte datagram costs a few nanoseconds.
//! The IPv4 header checksum needs no change: swapping two words of a one's-complement sum does
//! not change it.
//!
//! Frame accounting: every UMEM frame is in exactly one place, the `free` stack (ours), the fill
//! or rx ring (the kernel's, on the way in), our hands during one batch, or the tx or completion
//! ring (the kernel's, on the way out). Frames come back to `free` from the completion ring, or
//! straight away when we drop a frame or the tx ring refuses it. The stack is allocated at
//! start-up with room for every frame, so a push that would grow it is a double free and
//! asserts. The UMEM's own ledger (`melange_sys::frames`) enforces the kernel's side: a frame on
//! a ring is refused to us, and the socket never returns a frame twice, so the echo rewrites a
//! frame only through the per-frame accessor, never through a slice of the whole UMEM.
//!
//! One thread per queue, each with its own UMEM and socket (the engines do the same; sharing a
//! UMEM would make the fill and completion rings shared state).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use melange_bpf::Protocol;
use melange_control::{Direction, FilterOptions, FilterSpec, PortRange, XdpFilters};
use melange_sys::bpf::XdpMode;
use melange_sys::mmap::{Region, RegionOptions};
use melange_sys::xsk::{
    BindMode, BoundMode, SocketConfig, TxKick, Umem, UmemConfig, XdpDesc, XskError, XskSocket,
    XskStatistics,
};
use melange_wire::{ethernet, ipv4, udp, EtherType, IpProtocol};

use crate::IdleMode;

/// The largest `--batch`: descriptors taken from the rx ring per iteration.
pub const BATCH_LEN_MAX: usize = 256;
/// Bytes per UMEM frame.
const FRAME_SIZE: u32 = 2048;
/// UMEM frames per queue first asked for: 8 MiB, which needs `CAP_IPC_LOCK` or a memlock limit
/// above 8 MiB.
const FRAMES_DEFAULT: u32 = 4096;
/// UMEM frames per queue when [`FRAMES_DEFAULT`] hits the memlock limit: 4 MiB.
const FRAMES_FALLBACK: u32 = 2048;
/// The most `sendto` kicks per batch. In copy mode the kernel sends 32 frames per kick, so a
/// full 2048-entry tx ring drains in 64; the rest is slack for `EAGAIN` while the completion
/// ring is reaped. Whatever is left on the ring is kicked again on the next iteration.
const TX_KICKS_MAX: usize = 1024;
/// How long `--idle block` sleeps before looking at the stop flag again. Signals are handled on
/// the `ctrlc` thread, so they do not interrupt this thread's `ppoll`.
const BLOCK_TIMEOUT_NS: u64 = 100_000_000;

/// Attempts at binding a queue another socket still holds, [`BUSY_RETRY_MS`] apart.
const BUSY_RETRIES_MAX: u32 = 40;
/// Milliseconds between attempts at binding a busy queue.
const BUSY_RETRY_MS: u64 = 50;

// The fill ring holds half the frames; the rest are for frames on their way out.
const _: () = assert!(FRAMES_FALLBACK.is_power_of_two() && FRAMES_DEFAULT.is_power_of_two());
const _: () = assert!(FRAMES_FALLBACK / 2 >= BATCH_LEN_MAX as u32);

/// Set by the SIGINT/SIGTERM handler; every queue thread checks it once per iteration.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Options of `xdp-echo`.
#[derive(clap::Args, Debug)]
pub struct XdpEchoArgs {
    /// Interface to attach to.
    #[arg(long, default_value = "mlg-vb")]
    interface: String,
    /// UDP port to echo; other traffic is left to the kernel by the XDP program.
    #[arg(long, default_value_t = 7777)]
    port: u16,
    /// Receive queues to serve, one thread and one AF_XDP socket each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    queues: Vec<u32>,
    /// Cores to pin the queue threads to (comma-separated): one for all queues, or one per
    /// queue (`--cpus`, as on every melange command; `--cpu` also works).
    #[arg(long = "cpus", visible_alias = "cpu", value_delimiter = ',')]
    cpu: Vec<usize>,
    /// Descriptors taken from the rx ring per iteration (at most 256).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Idle behaviour: spin on the rx ring, or sleep in ppoll on the socket.
    #[arg(long, value_enum, default_value_t = IdleMode::Spin)]
    idle: IdleMode,
    /// How to attach the XDP program.
    #[arg(long, value_enum, default_value_t = AttachMode::Native)]
    xdp_mode: AttachMode,
    /// How to bind the AF_XDP sockets.
    #[arg(long, value_enum, default_value_t = Bind::Auto)]
    bind: Bind,
}

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
enum AttachMode {
    /// In the driver (veth supports it).
    Native,
    /// After the sk_buff is built; works everywhere, slower.
    Generic,
}

/// `--bind`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
enum Bind {
    /// Zero-copy if the driver can, else copy mode.
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only.
    ZeroCopy,
}

/// What [`echo_in_place`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten into its reply: transmit it.
    Echo,
    /// Not IPv4 (ARP, IPv6, VLAN...): drop.
    NotIpv4,
    /// IPv4 but not UDP, or a fragment: drop.
    NotUdp,
    /// UDP to another port: drop.
    OtherPort,
    /// A header or length field does not fit the frame: drop.
    Malformed,
}

/// Turns a received Ethernet frame holding an IPv4/UDP datagram to `port` into its echo, in
/// place: MACs, addresses and ports swapped, the UDP checksum recomputed (never the received
/// one forwarded, which may be a partial offload checksum). Any other frame is left unchanged
/// and its verdict says why. Never panics, whatever the bytes.
pub fn echo_in_place(frame: &mut [u8], port: u16) -> Verdict {
    let Ok(mut eth) = ethernet::Packet::new_checked(frame) else {
        return Verdict::Malformed;
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return Verdict::NotIpv4;
    }
    let (mac_src, mac_dst) = (eth.src_addr(), eth.dst_addr());
    {
        let Ok(mut ip) = ipv4::Packet::new_checked(eth.payload_mut()) else {
            return Verdict::Malformed;
        };
        if ip.protocol() != IpProtocol::Udp || ip.is_fragment() {
            return Verdict::NotUdp;
        }
        let (ip_src, ip_dst) = (ip.src_addr(), ip.dst_addr());
        let Ok(mut datagram) = udp::Packet::new_checked(ip.payload_mut()) else {
            return Verdict::Malformed;
        };
        if datagram.dst_port() != port {
            return Verdict::OtherPort;
        }
        // Every check passed: from here on the frame is the reply.
        let peer_port = datagram.src_port();
        datagram.set_src_port(port);
        datagram.set_dst_port(peer_port);
        datagram.fill_checksum(ip_dst, ip_src);
        // Swapping the two address words leaves the IPv4 header checksum valid.
        ip.set_src_addr(ip_dst);
        ip.set_dst_addr(ip_src);
    }
    eth.set_src_addr(mac_dst);
    eth.set_dst_addr(mac_src);
    Verdict::Echo
}

/// One queue's counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Frames taken from the rx ring.
    received: u64,
    /// Replies placed on the tx ring.
    echoed: u64,
    /// Frames that were not UDP to our port, or malformed.
    dropped_not_ours: u64,
    /// Replies the tx ring had no room for.
    dropped_tx_full: u64,
    /// `sendto` kicks, and those that asked to be retried.
    kicks: u64,
    kick_retries: u64,
    /// Blocking waits in `--idle block`.
    waits: u64,
}

impl Counters {
    fn dropped(&self) -> u64 {
        self.dropped_not_ours + self.dropped_tx_full
    }

    fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.echoed += other.echoed;
        self.dropped_not_ours += other.dropped_not_ours;
        self.dropped_tx_full += other.dropped_tx_full;
        self.kicks += other.kicks;
        self.kick_retries += other.kick_retries;
        self.waits += other.waits;
    }
}

/// One queue: its UMEM, its socket and the frames it holds.
struct EchoQueue {
    /// Declared before `umem` so the socket closes first (sound either way, see
    /// `melange_sys::xsk`, but this is the natural order).
    socket: XskSocket,
    umem: Umem,
    /// Frame base addresses we own; allocated for the frame count at start-up, never grown.
    free: Vec<u64>,
    /// Receive batch, `batch` long.
    rx: Vec<XdpDesc>,
    /// Transmit batch, `batch` long.
    tx: Vec<XdpDesc>,
    /// Scratch for completion and fill addresses, `fill_ring_size` long.
    addrs: Vec<u64>,
    /// `!(frame_size - 1)`: turns a descriptor address into its frame's base.
    frame_mask: u64,
    /// Frames on the tx or completion ring, not yet reaped.
    tx_in_flight: usize,
    port: u16,
    batch: usize,
    counters: Counters,
}

impl EchoQueue {
    /// Maps a UMEM of `frames` frames, binds a socket to `queue`, and fills the fill ring.
    fn open(
        ifindex: u32,
        queue: u32,
        frames: u32,
        bind: BindMode,
        port: u16,
        batch: usize,
    ) -> Result<Self, std::io::Error> {
        let bytes = frames as usize * FRAME_SIZE as usize;
        let region = Region::new(
            bytes,
            RegionOptions {
                hugepages: false,
                populate: true,
                // The UMEM registration pins and accounts the pages itself.
                lock: false,
            },
        )?;
        // Half the frames can wait on the fill ring; the other half are on their way out.
        let ring = frames / 2;
        let umem = Umem::new(
            region,
            UmemConfig {
                frame_size: FRAME_SIZE,
                frame_count: frames,
                headroom: 0,
                fill_ring_size: ring,
                completion_ring_size: ring,
            },
        )?;
        let socket = XskSocket::new(
            ifindex,
            queue,
            &umem,
            SocketConfig {
                rx_ring_size: ring,
                tx_ring_size: ring,
                bind,
                need_wakeup: true,
            },
        )?;
        let mut free = Vec::with_capacity(frames as usize);
        // Pushed in reverse so the first frames handed out are the lowest addresses.
        for index in (0..frames).rev() {
            free.push(
                umem.frame_addr(index)
                    .expect("index < frame_count by the loop bound"),
            );
        }
        let mut queue = Self {
            socket,
            umem,
            free,
            rx: vec![XdpDesc::default(); batch],
            tx: vec![XdpDesc::default(); batch],
            addrs: vec![0; ring as usize],
            frame_mask: !(u64::from(FRAME_SIZE) - 1),
            tx_in_flight: 0,
            port,
            batch,
            counters: Counters::default(),
        };
        queue.refill();
        Ok(queue)
    }

    /// Gives a frame back to the free stack.
    #[inline]
    fn release(&mut self, addr: u64) {
        assert!(
            self.free.len() < self.umem.frame_count() as usize,
            "more frames released than exist: a frame was released twice"
        );
        self.free.push(addr & self.frame_mask);
    }

    /// Moves transmitted frames from the completion ring back to the free stack.
    fn reap(&mut self) {
        loop {
            let n = self
                .socket
                .complete(self.umem.frames_mut(), &mut self.addrs);
            for i in 0..n {
                let addr = self.addrs[i];
                self.release(addr);
            }
            self.tx_in_flight = self.tx_in_flight.saturating_sub(n);
            if n < self.addrs.len() {
                break;
            }
        }
    }

    /// Puts as many free frames on the fill ring as it has room for.
    fn refill(&mut self) {
        let want = self.socket.fill_free().min(self.free.len());
        if want == 0 {
            return;
        }
        let from = self.free.len() - want;
        let placed = self.socket.fill(self.umem.frames_mut(), &self.free[from..]);
        // `fill` takes a prefix; keep the rest (normally none) on the stack.
        self.free.drain(from..from + placed);
        if placed > 0 && self.socket.needs_fill_wakeup() {
            // Zero-copy drivers may ask; copy mode never does. A failure here only delays
            // receive until the next wakeup.
            let _ = self.socket.wake_rx();
        }
    }

    /// Kicks the tx ring until the kernel has taken everything, reaping completions between
    /// kicks so that a full completion ring never stalls it.
    fn drain_tx(&mut self) -> std::io::Result<()> {
        for _ in 0..TX_KICKS_MAX {
            self.counters.kicks += 1;
            match self.socket.kick_tx()? {
                TxKick::Done => break,
                TxKick::Retry => {
                    self.counters.kick_retries += 1;
                    self.reap();
                    std::hint::spin_loop();
                }
            }
        }
        self.reap();
        Ok(())
    }

    /// One iteration: reap, refill, receive a batch, echo it, transmit and kick. Returns how
    /// many frames were received.
    fn poll(&mut self) -> std::io::Result<usize> {
        self.reap();
        self.refill();
        let n = self
            .socket
            .receive(self.umem.frames_mut(), &mut self.rx[..self.batch]);
        if n == 0 {
            if self.tx_in_flight > 0 {
                // A previous batch ran out of kicks; finish it.
                self.drain_tx()?;
            }
            return Ok(0);
        }
        self.counters.received += n as u64;
        let mut tx_len = 0;
        for i in 0..n {
            let desc = self.rx[i];
            // `receive` validated the descriptor (inside one frame, which it gave back to us), so
            // `packet_mut` finds it; a `None` would be a bug and drops the frame, not a panic.
            let verdict = self
                .umem
                .packet_mut(&desc)
                .map_or(Verdict::Malformed, |frame| echo_in_place(frame, self.port));
            if verdict == Verdict::Echo {
                self.tx[tx_len] = desc;
                tx_len += 1;
            } else {
                self.counters.dropped_not_ours += 1;
                self.release(desc.addr);
            }
        }
        if tx_len > 0 {
            let placed = self
                .socket
                .transmit(self.umem.frames_mut(), &self.tx[..tx_len]);
            for i in placed..tx_len {
                let addr = self.tx[i].addr;
                self.release(addr);
            }
            self.counters.echoed += placed as u64;
            self.counters.dropped_tx_full += (tx_len - placed) as u64;
            self.tx_in_flight += placed;
            if placed > 0 {
                self.drain_tx()?;
            }
        }
        Ok(n)
    }

    /// Serves until [`STOP`] is set.
    fn run(&mut self, idle: IdleMode) -> std::io::Result<()> {
        while !STOP.load(Ordering::Relaxed) {
            let n = self.poll()?;
            if n == 0 && idle == IdleMode::Block && self.tx_in_flight == 0 {
                self.counters.waits += 1;
                melange_sys::poll::wait_readable(&[self.socket.fd()], Some(BLOCK_TIMEOUT_NS))?;
            }
        }
        Ok(())
    }
}

/// The [`XskError`] inside `error`, if there is one.
fn xsk_error(error: &std::io::Error) -> Option<&XskError> {
    XskError::of(error)
}

/// Opens queue `queue`: [`FRAMES_DEFAULT`] frames, or [`FRAMES_FALLBACK`] if the UMEM hits the
/// locked-memory limit. Retries a busy queue for up to [`BUSY_RETRIES_MAX`] ×
/// [`BUSY_RETRY_MS`]: the kernel unbinds a closed socket's queue in deferred work, so a server
/// started right after the previous one exited (as benchmark scripts do) can find the queue
/// still taken for a moment.
fn open_queue(
    ifindex: u32,
    queue: u32,
    bind: BindMode,
    port: u16,
    batch: usize,
) -> std::io::Result<EchoQueue> {
    let mut frames = FRAMES_DEFAULT;
    let mut busy_retries = 0;
    loop {
        match EchoQueue::open(ifindex, queue, frames, bind, port, batch) {
            Err(e)
                if frames == FRAMES_DEFAULT
                    && matches!(xsk_error(&e), Some(XskError::UmemMemlock { .. })) =>
            {
                eprintln!("xdp-echo: queue {queue}: {e}; retrying with {FRAMES_FALLBACK} frames");
                frames = FRAMES_FALLBACK;
            }
            Err(e)
                if busy_retries < BUSY_RETRIES_MAX
                    && matches!(xsk_error(&e), Some(XskError::QueueBusy { .. })) =>
            {
                busy_retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(BUSY_RETRY_MS));
            }
            other => return other,
        }
    }
}

/// Runs `melange-baseline xdp-echo`.
pub fn xdp_echo(args: XdpEchoArgs) -> Result<()> {
    if args.batch == 0 || args.batch > BATCH_LEN_MAX {
        bail!("--batch must be in 1..={BATCH_LEN_MAX}");
    }
    if args.queues.is_empty() {
        bail!("--queues needs at least one queue");
    }
    if args.cpu.len() > 1 && args.cpu.len() != args.queues.len() {
        bail!("--cpu takes one core, or one per queue");
    }
    let mut sorted = args.queues.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != args.queues.len() {
        bail!("--queues lists a queue twice");
    }
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    let ifindex = melange_sys::netdev::ifindex(&args.interface)
        .with_context(|| format!("interface {}", args.interface))?;
    let queue_count = melange_sys::netdev::rx_queue_count(&args.interface)
        .with_context(|| format!("queue count of {}", args.interface))?;
    let queue_top = args.queues.iter().max().copied().unwrap_or(0);
    if queue_top as usize >= queue_count {
        bail!(
            "{} has {queue_count} receive queue(s); queue {queue_top} does not exist",
            args.interface
        );
    }
    let bind = match args.bind {
        Bind::Auto => BindMode::ZeroCopyOrCopy,
        Bind::Copy => BindMode::Copy,
        Bind::ZeroCopy => BindMode::ZeroCopy,
    };

    // Sockets first, then the program: nothing is redirected before a socket can take it.
    let mut queues = Vec::with_capacity(args.queues.len());
    for &queue in &args.queues {
        let echo = open_queue(ifindex, queue, bind, args.port, args.batch)
            .with_context(|| format!("AF_XDP socket on {} queue {queue}", args.interface))?;
        queues.push(echo);
    }
    let xdp_mode = match args.xdp_mode {
        AttachMode::Native => XdpMode::Native,
        AttachMode::Generic => XdpMode::Generic,
    };
    let filters = XdpFilters::attach(
        args.interface.as_str(),
        xdp_mode,
        FilterOptions {
            queues_max: queue_count as u32,
            ..FilterOptions::default()
        },
    )
    .with_context(|| format!("attaching the XDP program to {}", args.interface))?;
    for echo in &queues {
        filters
            .register_socket(0, echo.socket.queue_id(), echo.socket.fd())
            .context("registering the AF_XDP socket")?;
    }
    let filter = filters
        .create_filter(FilterSpec {
            direction: Direction::Receive,
            protocol: Protocol::Udp,
            peers: vec![],
            ports: PortRange::single(args.port),
            slot: 0,
        })
        .with_context(|| format!("steering UDP port {}", args.port))?;

    for echo in &queues {
        let mode = match echo.socket.bound_mode() {
            BoundMode::ZeroCopy => "zero-copy",
            BoundMode::Copy => "copy",
        };
        eprintln!(
            "baseline xdp-echo on {} queue {} port {}: {mode} mode, {} frames of {FRAME_SIZE} \
             bytes, batch {}, idle {:?}, xdp {:?}",
            args.interface,
            echo.socket.queue_id(),
            args.port,
            echo.umem.frame_count(),
            args.batch,
            args.idle,
            args.xdp_mode,
        );
    }

    let idle = args.idle;
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut echo)| {
            let cpu = args.cpu.get(i).or(args.cpu.first()).copied();
            std::thread::Builder::new()
                .name(format!("xdp-echo-q{}", echo.socket.queue_id()))
                .spawn(move || -> Result<(u32, Counters, XskStatistics)> {
                    if let Some(cpu) = cpu {
                        melange_sys::cpu::pin_current_thread(cpu)
                            .with_context(|| format!("pinning to cpu {cpu}"))?;
                    }
                    let result = echo.run(idle);
                    // Stop the other queues too if this one failed.
                    STOP.store(true, Ordering::Relaxed);
                    result.with_context(|| format!("queue {}", echo.socket.queue_id()))?;
                    let stats = echo.socket.statistics().context("XDP_STATISTICS")?;
                    Ok((echo.socket.queue_id(), echo.counters, stats))
                })
                .context("spawning a queue thread")
        })
        .collect::<Result<_>>()?;

    let mut total = Counters::default();
    let mut failure = None;
    for handle in handles {
        match handle
            .join()
            .expect("queue threads return errors instead of panicking")
        {
            Ok((queue, c, stats)) => {
                eprintln!(
                    "xdp-echo queue {queue}: received {} echoed {} dropped {} (not ours {}, tx \
                     full {}); kicks {} retried {}, waits {}; kernel rx_dropped {} rx_ring_full \
                     {} fill_empty {} tx_invalid {}",
                    c.received,
                    c.echoed,
                    c.dropped(),
                    c.dropped_not_ours,
                    c.dropped_tx_full,
                    c.kicks,
                    c.kick_retries,
                    c.waits,
                    stats.rx_dropped,
                    stats.rx_ring_full,
                    stats.rx_fill_ring_empty_descs,
                    stats.tx_invalid_descs,
                );
                total.add(&c);
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Ok(stats) = filters.stats() {
        eprintln!(
            "xdp-echo filter: redirected {} kernel {} no_socket {}",
            stats.redirected, stats.kernel, stats.no_socket
        );
    }
    println!(
        "received {} echoed {} dropped {}",
        total.received,
        total.echoed,
        total.dropped()
    );
    drop(filter);
    drop(filters);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_wire::checksum;
    use melange_wire::udp::ChecksumStatus;
    use std::net::Ipv4Addr;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    /// A client request as veth delivers it: the UDP checksum is only the pseudo-header sum
    /// (transmit offload left unfinished), and the frame is padded to 60 bytes.
    fn request(dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let udp_len = udp::HEADER_LEN + payload.len();
        let ip_len = ipv4::HEADER_LEN + udp_len;
        let mut frame = vec![0u8; (ethernet::HEADER_LEN + ip_len).max(60)];
        frame[0..6].copy_from_slice(&SERVER_MAC);
        frame[6..12].copy_from_slice(&CLIENT_MAC);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut frame[14..14 + ip_len]);
            ip.set_version_and_header_len(ipv4::HEADER_LEN);
            ip.set_total_len(ip_len as u16);
            ip.set_unfragmented(true);
            ip.set_ttl(64);
            ip.set_protocol(IpProtocol::Udp);
            ip.set_src_addr(CLIENT_IP);
            ip.set_dst_addr(SERVER_IP);
            ip.fill_checksum();
        }
        let mut datagram = udp::Packet::new_unchecked(&mut frame[34..34 + udp_len]);
        datagram.set_src_port(40000);
        datagram.set_dst_port(dst_port);
        datagram.set_len(udp_len as u16);
        datagram.payload_mut().copy_from_slice(payload);
        let partial =
            checksum::pseudo_header_v4(CLIENT_IP, SERVER_IP, udp::PROTOCOL, udp_len as u16);
        datagram.set_checksum(partial);
        frame
    }

    #[test]
    fn echo_swaps_everything_and_recomputes_a_partial_checksum() {
        let payload = *b"0123456789abcdefghij";
        let mut frame = request(7777, &payload);
        let len = frame.len();
        assert_eq!(echo_in_place(&mut frame, 7777), Verdict::Echo);
        assert_eq!(frame.len(), len);
        let eth = ethernet::Packet::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, CLIENT_MAC);
        assert_eq!(eth.src_addr().0, SERVER_MAC);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.src_addr(), SERVER_IP);
        assert_eq!(ip.dst_addr(), CLIENT_IP);
        assert!(
            ip.verify_checksum(),
            "swapping addresses keeps the header checksum"
        );
        let datagram = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(datagram.src_port(), 7777);
        assert_eq!(datagram.dst_port(), 40000);
        assert_eq!(datagram.payload(), &payload);
        assert_eq!(
            udp::checksum_status(&datagram, SERVER_IP, CLIENT_IP),
            ChecksumStatus::Valid
        );
    }

    #[test]
    fn echo_of_the_echo_is_the_request_with_a_full_checksum() {
        let mut frame = request(7777, b"ping");
        let original = frame.clone();
        assert_eq!(echo_in_place(&mut frame, 7777), Verdict::Echo);
        // The reply is from port 7777, so a server on 40000 would echo it back.
        assert_eq!(echo_in_place(&mut frame, 40000), Verdict::Echo);
        // Everything but the checksum field is as sent.
        assert_eq!(frame[..40], original[..40]);
        assert_eq!(frame[42..], original[42..]);
        let datagram = udp::Packet::new_checked(&frame[34..46]).unwrap();
        assert_eq!(
            udp::checksum_status(&datagram, CLIENT_IP, SERVER_IP),
            ChecksumStatus::Valid
        );
    }

    #[test]
    fn other_traffic_is_dropped_unchanged() {
        let mut frame = request(7778, b"x");
        let before = frame.clone();
        assert_eq!(echo_in_place(&mut frame, 7777), Verdict::OtherPort);
        assert_eq!(frame, before);

        let mut arp = request(7777, b"x");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(echo_in_place(&mut arp, 7777), Verdict::NotIpv4);

        let mut tcp = request(7777, b"x");
        tcp[14 + 9] = 6;
        assert_eq!(echo_in_place(&mut tcp, 7777), Verdict::NotUdp);

        let mut fragment = request(7777, b"x");
        fragment[14 + 6] = 0x20; // more fragments
        assert_eq!(echo_in_place(&mut fragment, 7777), Verdict::NotUdp);
    }

    #[test]
    fn malformed_frames_never_panic() {
        let frame = request(7777, b"hello");
        for cut in 0..frame.len() {
            let mut short = frame[..cut].to_vec();
            let verdict = echo_in_place(&mut short, 7777);
            // Only the padding may go; cutting into the datagram must be caught.
            if cut < 14 + 20 + 8 + 5 {
                assert_ne!(verdict, Verdict::Echo, "cut at {cut}");
            }
        }
        let mut bad_len = request(7777, b"hello");
        bad_len[38..40].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(echo_in_place(&mut bad_len, 7777), Verdict::Malformed);
    }
}
