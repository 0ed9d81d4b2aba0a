//! Stub: being written.

/// Lab subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Show the lab's state.
    Status,
}

/// Runs a lab subcommand.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    let _ = command;
    anyhow::bail!("the lab is not built yet")
}
