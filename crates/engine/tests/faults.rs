//! The engine and the stack under scripted device faults (the fake NIC): every buffer keeps
//! exactly one owner, the app learns of refusals at once, errors are counted by kind, and
//! nothing panics.

mod common;

use common::*;
use melange_apps::{EchoApp, EchoConfig};
use melange_core::contract::CommandError;
use melange_core::{App, BufChain, Event, IoContext, SendError, SocketId, TimerId};
use melange_engine::fake_nic::Fault;
use melange_engine::NicErrorKind;
use std::net::SocketAddrV4;

fn echo() -> EchoApp {
    EchoApp::new(
        EchoConfig {
            ports: vec![PORT],
            ..EchoConfig::default()
        },
        |_| {},
    )
}

#[test]
fn echo_answers_through_the_fake_nic() {
    let mut engine = engine(echo(), 256, config());
    deliver(&mut engine, 10);
    assert_eq!(engine.poll(1_000), 10);
    let nic = engine.transport().nic().counters();
    assert_eq!(nic.transmitted, 10);
    assert_eq!(engine.app().counters().echoed, 10);
    let reply = engine.transport().nic().last_tx().to_vec();
    assert_eq!(
        &reply[..6],
        &PEER_MAC,
        "the reply goes to the peer's resolved MAC"
    );
    assert_eq!(&reply[reply.len() - 64..], &[9u8; 64]);
    let counters = engine.transport_counters();
    assert_eq!(counters.tx_packets, 10);
    assert_eq!(counters.tx_bytes, nic.tx_bytes);
    assert_no_leak(engine);
}

#[test]
fn a_full_ring_refuses_sends_at_once_and_the_app_keeps_its_buffers() {
    let mut engine = engine(echo(), 256, config());
    engine
        .transport_mut()
        .nic_mut()
        .script(Fault::TxRingFull { passes: 1 });
    deliver(&mut engine, 8);
    engine.poll(1_000);
    assert_eq!(engine.app().counters().echoed, 0);
    assert_eq!(engine.app().counters().send_errors, 8);
    assert_eq!(engine.transport_counters().tx_no_room, 8);
    assert_eq!(engine.transport().nic().counters().transmitted, 0);
    // The ring has room again in the next pass.
    deliver(&mut engine, 4);
    engine.poll(2_000);
    assert_eq!(engine.app().counters().echoed, 4);
    assert_no_leak(engine);
}

#[test]
fn an_eagain_storm_drops_the_rest_of_the_batch_counted() {
    let mut engine = engine(echo(), 256, config());
    engine
        .transport_mut()
        .nic_mut()
        .script(Fault::TxPartial { accepted: 3 });
    deliver(&mut engine, 10);
    engine.poll(1_000);
    let counters = engine.transport_counters();
    assert_eq!(counters.tx_packets, 3);
    assert_eq!(counters.tx_dropped, 7);
    assert_eq!(
        counters.tx_bytes,
        engine.transport().nic().counters().tx_bytes,
        "a partly sent batch counts the bytes that went out"
    );
    assert_no_leak(engine);
}

#[test]
fn the_device_going_down_mid_batch_is_counted_and_loses_no_buffer() {
    let mut engine = engine(echo(), 256, config());
    engine
        .transport_mut()
        .nic_mut()
        .script(Fault::NetDownMidBatch { taken: 2 });
    deliver(&mut engine, 10);
    engine.poll(1_000);
    let counters = engine.transport_counters();
    assert_eq!(counters.errors.count(NicErrorKind::DeviceDown), 1);
    assert_eq!(counters.tx_packets, 2);
    assert_eq!(counters.tx_dropped, 8);
    let last = counters.errors.last().unwrap();
    assert_eq!(last.errno, Some(100));
    assert!(last.to_string().contains("fake transmit"), "{last}");
    // The engine goes on.
    deliver(&mut engine, 3);
    engine.poll(2_000);
    assert_eq!(engine.transport_counters().tx_packets, 5);
    assert_no_leak(engine);
}

#[test]
fn bad_and_repeated_descriptors_are_counted_never_used() {
    let mut engine = engine(echo(), 256, config());
    let nic = engine.transport_mut().nic_mut();
    nic.script(Fault::RepeatedRxDescriptor);
    nic.script(Fault::BadRxDescriptor { index: 200 });
    deliver(&mut engine, 5);
    engine.poll(1_000);
    assert_eq!(engine.transport().nic().counters().bad_descriptors, 2);
    assert_eq!(
        engine
            .transport_counters()
            .errors
            .count(NicErrorKind::BadDescriptor),
        1
    );
    assert_eq!(engine.app().counters().echoed, 5);
    assert_no_leak(engine);
}

#[test]
fn receive_errors_are_counted_by_kind() {
    let mut engine = engine(echo(), 256, config());
    engine.transport_mut().nic_mut().script(Fault::RxError);
    deliver(&mut engine, 2);
    assert_eq!(engine.poll(1_000), 0);
    assert_eq!(
        engine
            .transport_counters()
            .errors
            .count(NicErrorKind::Receive),
        1
    );
    assert_eq!(engine.poll(2_000), 2, "the frames wait on the wire");
    assert_no_leak(engine);
}

/// Keeps every datagram until told to let go: an app that starves the pool. A timer every
/// microsecond makes sure it runs even when nothing can arrive.
struct Hoarder {
    held: Vec<BufChain>,
    release: bool,
    socket: Option<SocketId>,
}

impl App for Hoarder {
    fn start(&mut self, io: &mut IoContext<'_>) {
        self.socket = Some(io.bind_udp(PORT).unwrap());
        io.arm_timer(1_000, 0).unwrap();
    }
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::Datagram { data, .. } => self.held.push(data),
                Event::Timer { .. } => {
                    io.arm_timer(io.now_ns() + 1_000, 0).unwrap();
                }
                _ => {}
            }
        }
        if self.release {
            for data in self.held.drain(..) {
                io.free_chain(data);
            }
        }
    }
}

#[test]
fn an_empty_fill_ring_drops_counted_and_recovers() {
    let app = Hoarder {
        held: Vec::new(),
        release: false,
        socket: None,
    };
    let mut engine = engine(app, 64, config());
    deliver(&mut engine, 200);
    for pass in 0..20 {
        engine.poll(1_000 * pass);
    }
    let held = engine.app().held.len();
    assert!(held <= 64 && held > 0, "held {held}");
    assert!(engine.transport().nic().counters().rx_no_buffer > 0);
    assert_eq!(engine.transport().nic().wire_len(), 0);
    engine.app_mut().release = true;
    deliver(&mut engine, 10);
    for pass in 20..25 {
        engine.poll(1_000 * pass);
    }
    assert!(engine.app().held.is_empty());
    assert_no_leak(engine);
}

/// Sends with `notify` and records what comes back.
#[derive(Default)]
struct Notifier {
    socket: Option<SocketId>,
    done: Vec<(u64, Result<(), SendError>, Vec<u8>)>,
    to_send: usize,
}

impl App for Notifier {
    fn start(&mut self, io: &mut IoContext<'_>) {
        self.socket = Some(io.bind_udp(PORT).unwrap());
    }
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::SendDone {
                    token,
                    result,
                    data,
                } => {
                    let data = data.expect("a notified send gives its buffers back");
                    let mut bytes = vec![0; data.len()];
                    io.chain_read(&data, 0, &mut bytes);
                    io.free_chain(data);
                    self.done.push((token, result, bytes));
                }
                other => {
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
                    }
                }
            }
        }
        for token in 0..std::mem::take(&mut self.to_send) as u64 {
            let mut buf = io.alloc().unwrap();
            io.set_payload_len(&mut buf, 5).unwrap();
            io.payload_mut(&buf).copy_from_slice(b"hello");
            let to = SocketAddrV4::new(PEER_IP, 9000);
            io.send_to_notify(self.socket.unwrap(), to, buf, token)
                .unwrap();
        }
    }
}

#[test]
fn buffers_come_back_to_the_app_when_the_device_is_done() {
    let mut engine = engine(Notifier::default(), 256, config());
    engine.poll(0);
    let nic = engine.transport_mut().nic_mut();
    nic.script(Fault::HoldCompletions);
    engine.app_mut().to_send = 3;
    // A pass runs the app only when it has events; a datagram gives it one.
    deliver(&mut engine, 1);
    engine.poll(1_000);
    assert_eq!(engine.transport().nic().tx_in_flight(), 3);
    for pass in 2..5 {
        engine.poll(1_000 * pass);
    }
    assert!(
        engine.app().done.is_empty(),
        "nothing comes back before completion"
    );
    engine
        .transport_mut()
        .nic_mut()
        .script(Fault::ReleaseCompletions);
    engine.poll(5_000);
    engine.poll(6_000);
    let done = &engine.app().done;
    assert_eq!(done.len(), 3);
    for (i, (token, result, bytes)) in done.iter().enumerate() {
        assert_eq!(*token, i as u64);
        assert_eq!(*result, Ok(()));
        assert_eq!(bytes, b"hello", "the payload window is the app's again");
    }
    assert_eq!(engine.counters().buffers_returned, 3);
    assert_no_leak(engine);
}

#[test]
fn a_dropped_notified_send_comes_back_with_the_reason() {
    let mut engine = engine(Notifier::default(), 256, config());
    engine.poll(0);
    engine
        .transport_mut()
        .nic_mut()
        .script(Fault::TxPartial { accepted: 1 });
    engine.app_mut().to_send = 2;
    deliver(&mut engine, 1);
    engine.poll(1_000);
    engine.poll(2_000);
    engine.poll(3_000);
    let mut done = engine.app().done.clone();
    done.sort_by_key(|d| d.0);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].1, Ok(()), "the first frame of the batch went out");
    assert_eq!(done[1].1, Err(SendError::TxQueueFull));
    assert_no_leak(engine);
}

/// Arms, re-arms and cancels timers, recording what fires.
#[derive(Default)]
struct Timers {
    fired: Vec<(u64, u64)>,
    armed: Vec<TimerId>,
    refused: Vec<CommandError>,
}

impl App for Timers {
    fn start(&mut self, io: &mut IoContext<'_>) {
        for (deadline, token) in [(10_000, 1), (20_000, 2), (30_000, 3)] {
            match io.arm_timer(deadline, token) {
                Ok(timer) => self.armed.push(timer),
                Err(e) => self.refused.push(e),
            }
        }
        // Timer 1 moves later, timer 2 is cancelled (its token comes back).
        io.rearm_timer(self.armed[0], 25_000).unwrap();
        assert_eq!(io.cancel_timer(self.armed[1]), Ok(2));
        let stale = io.cancel_timer(self.armed[1]).unwrap_err();
        self.refused.push(stale);
    }
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            if let Event::Timer { token, .. } = event {
                self.fired.push((io.now_ns(), token));
                // A fired timer's handle is stale.
                let stale = io.rearm_timer(self.armed[0], 1).unwrap_err();
                self.refused.push(stale);
            }
        }
    }
}

#[test]
fn timers_rearm_cancel_and_keep_to_the_quota() {
    let config = melange_engine::EngineConfig {
        app_timers_max: 2,
        ..common::config()
    };
    let mut engine = engine(Timers::default(), 64, config);
    for now in (0..=40_000).step_by(1_000) {
        engine.poll(now);
    }
    let app = engine.app();
    assert_eq!(app.fired, vec![(25_000, 1)]);
    assert_eq!(
        app.refused,
        vec![
            CommandError::TimerQuota { quota: 2 },
            CommandError::Handle(melange_core::HandleError::Stale),
            CommandError::Handle(melange_core::HandleError::Stale),
        ]
    );
    assert_no_leak(engine);
}
