//! `melange-baseline`: the baselines as a program of their own; see the library documentation.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    melange_baseline::main_from(std::env::args_os())
}
