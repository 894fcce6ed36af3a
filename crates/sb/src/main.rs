//! `sb`: the Switchboard server (`sb serve`) and its command-line client.

mod agent;
mod chat_cmds;
mod chat_tui;
mod cli;
mod client_cmds;
mod device_cmds;
mod files_cmds;
mod monitor_cmds;
mod simulate;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client_cmds::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
