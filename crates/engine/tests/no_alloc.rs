//! An engine pass allocates nothing after warm-up: proven with a counting global allocator.
//!
//! The engine serves an echo over the fake NIC. Every frame the test will deliver is built
//! first (building frames allocates); then the allocator starts counting, and hundreds of
//! passes receive, parse, echo, transmit, complete and arm timers. The count must stay at
//! zero. This binary holds only this test, so no other test allocates while it counts.

mod common;

use common::*;
use melange_apps::{EchoApp, EchoConfig};
use melange_sys::alloc_count::{start_counting, stop_counting, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn an_engine_pass_allocates_nothing_after_warm_up() {
    let app = EchoApp::new(
        EchoConfig {
            ports: vec![PORT],
            ..EchoConfig::default()
        },
        |_| {},
    );
    let mut engine = engine(app, 512, config());
    // Warm-up: the first pass starts the app (which binds its port).
    deliver(&mut engine, 100);
    for pass in 0..10 {
        engine.poll(pass * 1_000);
    }
    // Everything the measured passes will receive is on the wire before counting starts.
    deliver(&mut engine, 900);
    start_counting();
    let mut work = 0;
    for pass in 10..400 {
        work += engine.poll(pass * 1_000);
    }
    let allocations = stop_counting();
    assert_eq!(work, 900, "the measured passes did the work");
    assert_eq!(engine.app().counters().echoed, 1000);
    assert_eq!(allocations, 0, "{allocations} allocations in 390 passes");
    assert_no_leak(engine);
}
