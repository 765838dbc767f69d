//! What every Lifeboat binary does around its command: logs to stderr
//! (`RUST_LOG`, default warnings), a Tokio runtime, and one line per error.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `command` on a fresh runtime and turns its result into the exit
/// status; an error is printed as `NAME: error: …` (its whole chain).
pub fn run<E: Display>(name: &str, command: impl Future<Output = Result<u8, E>>) -> ExitCode {
    run_logging(name, "warn", command)
}

/// [`run`], logging at `default_level` when `RUST_LOG` is unset (a daemon
/// reports its progress at `info`).
pub fn run_logging<E: Display>(
    name: &str,
    default_level: &str,
    command: impl Future<Output = Result<u8, E>>,
) -> ExitCode {
    quiet_on_closed_stdout();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of a command whose reader went away (`lifeboat jobs | head`):
/// what a process killed by SIGPIPE reports to its shell.
const CLOSED_STDOUT: i32 = 141;

/// Makes a write to a closed standard output end the process quietly, as
/// the SIGPIPE a C program gets would, instead of with a panic message.
/// Only standard output: SIGPIPE stays ignored, so a write to a store's
/// closed socket still fails as an error naming the store.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(CLOSED_STDOUT);
        }
        default(info);
    }));
}
