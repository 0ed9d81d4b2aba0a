#!/usr/bin/env python3
"""Fuzz seeds from real traffic: the helper of scripts/fuzz-seeds.sh (see its header).

Subcommands:
  send HOST PORT SIZE...      send one UDP datagram of each size (a byte pattern) to HOST:PORT
  netlink OUT IFNAME...       write the kernel's RTM_GETLINK replies for these interfaces (and
                              for an index that does not exist, and one dump) as
                              `sys_link_reply` seeds: 4 bytes of ifindex (LE), then the reply
  split OUT PCAP...           split captures (classic pcap, Ethernet) into frames and write
                              each frame-fed target's seeds under OUT/<target>/

Why it is built this way: the standard library only (no scapy), a pcap reader of a dozen
lines, and deterministic output (seeds chosen by class in capture order, named by the SHA-1
of their bytes, as libFuzzer names corpus files), so a rerun on the same capture writes the
same files. Seeds are bounded (SEEDS_MAX per target) and picked round-robin over classes
(protocol, fragment position, port role, size bucket) so that a flood of one kind of frame
cannot crowd out the rare ones.

The frame-level targets of the stack (`net_frame_input`, `engine_ops`) live in a small
fuzz world (us 10.0.0.1, 02:00:00:00:00:01, UDP port 7; the peer 10.0.0.2), so their seeds
are the frames the lab's server received, moved into that world: the server's addresses and
ports become ours, the client's become the peer's, the IPv4 header checksum is recomputed and
the UDP checksum is rewritten to the same kind it had (valid, partial offload sum, zero).
Without that, every captured frame would stop at "not for us".
"""

import hashlib
import os
import socket
import struct
import sys

SEEDS_MAX = 64
# The lab (crates/cli/src/lab.rs): mlg-a client, mlg-b server.
LAB_CLIENT_IP = bytes([10, 77, 0, 1])
LAB_SERVER_IP = bytes([10, 77, 0, 2])
# Ports the lab's servers listen on in scripts/fuzz-seeds.sh: the echo, sockperf.
ECHO_PORT = 7777
SOCKPERF_PORT = 11111
SERVER_PORTS = (ECHO_PORT, SOCKPERF_PORT)

# The fuzz worlds (crates/net/src/fuzz.rs, crates/engine/src/fuzz.rs).
OUR_MAC = bytes([0x02, 0, 0, 0, 0, 0x01])
OUR_IP = bytes([10, 0, 0, 1])
PEER_IP = bytes([10, 0, 0, 2])
WORLD_PORT = 7
NET_PEER_MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
ENGINE_PEER_MAC = bytes([0x02, 0, 0, 0, 1, 2])
# net_frame_input's first byte: FLAG_ECHO 1, FLAG_SEND_UNRESOLVED 2, FLAG_TIMEOUTS 4.
NET_FLAGS = (0x00, 0x01, 0x07)
# engine_ops: `Op` has 13 variants; `arbitrary` picks variant k for a u32 x (LE) when
# (x * 13) >> 32 == k. RawFrame is variant 0, Step variant 12.
ENGINE_VARIANTS = 13
ENGINE_RAW_FRAME = 0
ENGINE_STEP = 12
ENGINE_FRAMES_PER_SEED = 8

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
PROTO_ICMP = 1
PROTO_UDP = 17
PROTO_TCP = 6


def read_pcap(path):
    """The frames of a classic pcap file (either byte order, micro- or nanosecond stamps)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        sys.exit(f"{path}: not a classic pcap file (capture with `tshark -F pcap` or tcpdump)")
    (linktype,) = struct.unpack(order + "I", data[20:24])
    if linktype != 1:
        sys.exit(f"{path}: link type {linktype}, expected 1 (Ethernet): capture on the veth")
    frames, at = [], 24
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack(order + "IIII", data[at : at + 16])
        at += 16
        frames.append(data[at : at + incl])
        at += incl
    return frames


def fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def sum16(data):
    if len(data) % 2:
        data = data + b"\0"
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def pseudo_sum(src, dst, length):
    return fold(sum16(src + dst) + PROTO_UDP + length)


def udp_status(src, dst, datagram):
    """valid, partial, zero or invalid, as melange_wire::udp::checksum_status says."""
    field = struct.unpack("!H", datagram[6:8])[0]
    if field == 0:
        return "zero"
    length = struct.unpack("!H", datagram[4:6])[0]
    if fold(pseudo_sum(src, dst, length) + sum16(datagram[:length])) == 0xFFFF:
        return "valid"
    if field == pseudo_sum(src, dst, length):
        return "partial"
    return "invalid"


def udp_checksum(status, src, dst, datagram):
    """The checksum field of `datagram` (checksum field zeroed) of the given kind."""
    length = struct.unpack("!H", datagram[4:6])[0]
    if status == "zero":
        return 0
    if status == "partial":
        return pseudo_sum(src, dst, length)
    value = 0xFFFF & ~fold(pseudo_sum(src, dst, length) + sum16(datagram[:length]))
    return value or 0xFFFF


class Frame:
    """The fields of one captured frame that classification and relocation need."""

    def __init__(self, raw):
        self.raw = raw
        self.ethertype = struct.unpack("!H", raw[12:14])[0] if len(raw) >= 14 else None
        self.ip = None
        if self.ethertype == ETH_IPV4 and len(raw) >= 34 and raw[14] >> 4 == 4:
            ihl = (raw[14] & 0x0F) * 4
            total = struct.unpack("!H", raw[16:18])[0]
            if ihl >= 20 and 14 + ihl <= len(raw) and ihl <= total:
                flags_off = struct.unpack("!H", raw[20:22])[0]
                self.ip = {
                    "ihl": ihl,
                    "end": min(len(raw), 14 + total),
                    "id": struct.unpack("!H", raw[18:20])[0],
                    "mf": bool(flags_off & 0x2000),
                    "offset": (flags_off & 0x1FFF) * 8,
                    "proto": raw[23],
                    "src": raw[26:30],
                    "dst": raw[30:34],
                }

    def ip_packet(self):
        return self.raw[14 : self.ip["end"]]

    def ip_payload(self):
        return self.raw[14 + self.ip["ihl"] : self.ip["end"]]

    def fragment(self):
        """none, first, middle or last."""
        if not self.ip["mf"] and self.ip["offset"] == 0:
            return "none"
        if self.ip["offset"] == 0:
            return "first"
        return "middle" if self.ip["mf"] else "last"

    def key(self):
        return (self.ip["src"], self.ip["dst"], self.ip["id"], self.ip["proto"])

    def ports(self):
        if self.ip and self.ip["proto"] == PROTO_UDP and self.ip["offset"] == 0:
            payload = self.ip_payload()
            if len(payload) >= 4:
                return struct.unpack("!HH", payload[:4])
        return None

    def size_bucket(self):
        return len(self.raw).bit_length()

    def klass(self):
        """The class a seed stands for: protocol, position, port role and size bucket."""
        if self.ethertype == ETH_ARP:
            op = self.raw[21] if len(self.raw) > 21 else None
            return ("arp", op)
        if not self.ip:
            return ("other", self.ethertype, self.size_bucket())
        proto = self.ip["proto"]
        detail = None
        if proto == PROTO_ICMP and self.ip["offset"] == 0 and self.ip_payload():
            detail = self.ip_payload()[0]
        ports = self.ports()
        if ports:
            src, dst = ports
            detail = "to" if dst in SERVER_PORTS else "from" if src in SERVER_PORTS else "other"
            detail += "-sockperf" if SOCKPERF_PORT in ports else ""
        return ("ipv4", proto, detail, self.fragment(), self.size_bucket())


def reassemble(frames):
    """Whole IPv4 payloads of fragmented datagrams, by (src, dst, id, proto)."""
    parts = {}
    for frame in frames:
        if frame.ip and frame.fragment() != "none":
            parts.setdefault(frame.key(), []).append(frame)
    whole = {}
    for key, pieces in parts.items():
        pieces.sort(key=lambda f: f.ip["offset"])
        data, complete = b"", pieces[0].ip["offset"] == 0
        for piece in pieces:
            if piece.ip["offset"] != len(data):
                complete = False
                break
            data += piece.ip_payload()
        complete = complete and not pieces[-1].ip["mf"]
        if complete:
            whole[key] = data
    return whole


def learn_macs(frames):
    """The lab's MAC addresses, from the source fields of what each end sent."""
    macs = {}
    for frame in frames:
        if frame.ip:
            macs.setdefault(frame.ip["src"], frame.raw[6:12])
        elif frame.ethertype == ETH_ARP and len(frame.raw) >= 42:
            macs.setdefault(frame.raw[28:32], frame.raw[22:28])
    return macs.get(LAB_SERVER_IP), macs.get(LAB_CLIENT_IP)


def relocate(frame, whole, macs, peer_mac):
    """The frame moved into a fuzz world (see the module documentation), or None."""
    server_mac, client_mac = macs
    mac_map = {server_mac: OUR_MAC, client_mac: peer_mac}
    ip_map = {LAB_SERVER_IP: OUR_IP, LAB_CLIENT_IP: PEER_IP}
    raw = bytearray(frame.raw)
    for at in (0, 6):
        raw[at : at + 6] = mac_map.get(bytes(raw[at : at + 6]), raw[at : at + 6])
    if frame.ethertype == ETH_ARP and len(raw) >= 42:
        for at in (22, 32):
            raw[at : at + 6] = mac_map.get(bytes(raw[at : at + 6]), raw[at : at + 6])
        for at in (28, 38):
            raw[at : at + 4] = ip_map.get(bytes(raw[at : at + 4]), raw[at : at + 4])
        return bytes(raw)
    if not frame.ip:
        return None
    ihl, start = frame.ip["ihl"], 14 + frame.ip["ihl"]
    src, dst = frame.ip["src"], frame.ip["dst"]
    new_src, new_dst = ip_map.get(src, src), ip_map.get(dst, dst)
    raw[26:30], raw[30:34] = new_src, new_dst
    raw[24:26] = b"\0\0"
    raw[24:26] = struct.pack("!H", 0xFFFF & ~sum16(bytes(raw[14 : 14 + ihl])))
    if frame.ip["proto"] == PROTO_UDP and frame.ip["offset"] == 0 and frame.ip["end"] >= start + 8:
        datagram = whole.get(frame.key(), frame.ip_payload())
        status = udp_status(src, dst, datagram) if len(datagram) >= 8 else "invalid"
        new = bytearray(datagram)
        for at in (0, 2):
            port = struct.unpack("!H", new[at : at + 2])[0]
            if port in SERVER_PORTS:
                new[at : at + 2] = struct.pack("!H", WORLD_PORT)
        raw[start : start + 4] = new[:4]
        length = struct.unpack("!H", new[4:6])[0]
        if status != "invalid" and length <= len(new):
            new[6:8] = b"\0\0"
            checksum = udp_checksum(status, new_src, new_dst, bytes(new))
            raw[start + 6 : start + 8] = struct.pack("!H", checksum)
    return bytes(raw)


def inbound(frame, macs):
    """Whether the lab's server received the frame (to its MAC, or broadcast/multicast):
    what the stack's targets take as input. What the server sent is its own output."""
    return frame.raw[0:6] == macs[0] or bool(frame.raw[0] & 1)


def choose(candidates):
    """At most SEEDS_MAX distinct seeds, round-robin over classes (sorted), each class in
    capture order."""
    by_class, seen = {}, set()
    for klass, data in candidates:
        if data in seen:
            continue
        seen.add(data)
        by_class.setdefault(repr(klass), []).append(data)
    queues = [by_class[k] for k in sorted(by_class)]
    chosen, depth = [], 0
    while len(chosen) < SEEDS_MAX and any(len(q) > depth for q in queues):
        for queue in queues:
            if len(queue) > depth and len(chosen) < SEEDS_MAX:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def write_seeds(out, target, seeds):
    directory = os.path.join(out, target)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    for data in seeds:
        with open(os.path.join(directory, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    print(f"seeds: {target}: {len(seeds)}")


def engine_op_frame(frame):
    """`Op::RawFrame(frame)` as `arbitrary` 1.x decodes it: the variant's u32, then each
    byte behind a "one more" bool, then a "stop" bool."""
    out = bytearray(struct.pack("<I", discriminant(ENGINE_RAW_FRAME)))
    for byte in frame:
        out += bytes([1, byte])
    out.append(0)
    return bytes(out)


def engine_op_step(us):
    return struct.pack("<IH", discriminant(ENGINE_STEP), us)


def discriminant(variant):
    value = -(-(variant << 32) // ENGINE_VARIANTS)
    assert (value * ENGINE_VARIANTS) >> 32 == variant
    return value


def split(out, paths):
    frames = []
    for path in paths:
        frames += [Frame(raw) for raw in read_pcap(path)]
    if not frames:
        sys.exit("split: the captures hold no frames")
    whole = reassemble(frames)
    macs = learn_macs(frames)
    if None in macs:
        sys.exit("split: no frame from the lab's server or client: did the traffic run?")
    targets = {name: [] for name in (
        "wire_ethernet", "wire_arp", "wire_ipv4", "wire_icmpv4", "wire_udp", "wire_tcp",
        "net_frame_input", "baseline_xdp_echo", "apps_loadgen_reply", "apps_sockperf",
    )}
    for n, frame in enumerate(frames):
        klass = frame.klass()
        targets["wire_ethernet"].append((klass, frame.raw))
        targets["baseline_xdp_echo"].append((klass, frame.raw))
        net = relocate(frame, whole, macs, NET_PEER_MAC) if inbound(frame, macs) else None
        if net is not None:
            flags = NET_FLAGS[n % len(NET_FLAGS)]
            targets["net_frame_input"].append(((klass, flags), bytes([flags]) + net))
        if frame.ethertype == ETH_ARP:
            targets["wire_arp"].append((klass, frame.raw[14:]))
        if not frame.ip:
            continue
        targets["wire_ipv4"].append((klass, frame.ip_packet()))
        if frame.ip["offset"] != 0:
            continue
        payload = frame.ip_payload()
        if frame.ip["proto"] == PROTO_ICMP:
            targets["wire_icmpv4"].append((klass, payload))
        if frame.ip["proto"] == PROTO_TCP:
            targets["wire_tcp"].append((klass, frame.ip["src"] + frame.ip["dst"] + payload))
        if frame.ip["proto"] == PROTO_UDP:
            targets["wire_udp"].append((klass, frame.ip["src"] + frame.ip["dst"] + payload))
            datagram = whole.get(frame.key(), payload)
            ports = frame.ports()
            if ports and len(datagram) >= 8:
                length = struct.unpack("!H", datagram[4:6])[0]
                body = datagram[8:length]
                if ports[0] == ECHO_PORT:
                    targets["apps_loadgen_reply"].append((klass, body))
                if SOCKPERF_PORT in ports:
                    targets["apps_sockperf"].append((klass, body))
    for target, candidates in targets.items():
        write_seeds(out, target, choose(candidates))
    # engine_ops: runs of consecutive captured frames (moved into the engine's world), each
    # followed by a clock step, so that conversations (ARP then datagrams, the fragments of
    # one datagram, a ping and its answer) arrive in the order the lab saw them.
    moved = [(f, relocate(f, whole, macs, ENGINE_PEER_MAC)) for f in frames if inbound(f, macs)]
    moved = [(f, m) for f, m in moved if m is not None]
    runs = []
    for start in range(0, len(moved), ENGINE_FRAMES_PER_SEED):
        window = moved[start : start + ENGINE_FRAMES_PER_SEED]
        data = b"".join(engine_op_frame(m) + engine_op_step(50) for _, m in window)
        klass = tuple(sorted({repr(f.klass()) for f, _ in window}))
        runs.append((klass, data))
    write_seeds(out, "engine_ops", choose(runs))


def send(host, port, sizes):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for size in sizes:
        sock.sendto(bytes((i * 7 + 3) & 0xFF for i in range(size)), (host, port))
    sock.close()


def netlink(out, names):
    """RTM_GETLINK replies, as melange_sys::netdev::link_info receives them."""
    seeds = []
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    rtm_getlink, nlm_f_request, nlm_f_dump = 18, 1, 0x300

    def ask(index, flags, seq):
        ifinfo = struct.pack("=BBHiII", 0, 0, 0, index, 0, 0)
        header = struct.pack("=IHHII", 16 + len(ifinfo), rtm_getlink, flags, seq, 0)
        sock.send(header + ifinfo)
        return sock.recv(1 << 16)

    for seq, name in enumerate(names, 1):
        index = socket.if_nametoindex(name)
        seeds.append(struct.pack("<I", index) + ask(index, nlm_f_request, seq))
    missing = 0x7FFF0000
    seeds.append(struct.pack("<I", missing) + ask(missing, nlm_f_request, 100))
    seeds.append(struct.pack("<I", 1) + ask(0, nlm_f_request | nlm_f_dump, 101))
    sock.close()
    write_seeds(out, "sys_link_reply", seeds)


def main(argv):
    if len(argv) >= 4 and argv[1] == "send":
        send(argv[2], int(argv[3]), [int(n) for n in argv[4:]])
    elif len(argv) >= 3 and argv[1] == "netlink":
        netlink(argv[2], argv[3:])
    elif len(argv) >= 4 and argv[1] == "split":
        split(argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
