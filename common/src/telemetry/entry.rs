//! What every Lifeboat binary does around its command: logs to stderr
//! (`RUST_LOG`, default warnings; `LIFEBOAT_LOG_FORMAT=json` for JSON
//! lines), traces for daemons that name an endpoint, a Tokio runtime, and
//! one line per error.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use super::logging::{self, Format};
use super::traces::{self, Traces};

/// Runs `command` on a fresh runtime and turns its result into the exit
/// status; an error is printed as `NAME: error: …` (its whole chain).
pub fn run<E: Display>(name: &str, command: impl Future<Output = Result<u8, E>>) -> ExitCode {
    // Only daemons export: a one-shot command's spans would be a trace per call.
    run_with(name, "warn", Export::Off, command)
}

/// [`run`] for a daemon: logging at `default_level` when `RUST_LOG` is
/// unset (a daemon reports its progress at `info`), and traces exported
/// when `otlp_endpoint` or the standard variables name an endpoint.
pub fn run_daemon<E: Display>(
    name: &str,
    default_level: &str,
    otlp_endpoint: Option<&str>,
    command: impl Future<Output = Result<u8, E>>,
) -> ExitCode {
    run_with(name, default_level, Export::Traces { configured: otlp_endpoint }, command)
}

/// Whether spans are exported.
enum Export<'a> {
    Off,
    /// To the configured endpoint, else the one the standard variables name.
    Traces {
        configured: Option<&'a str>,
    },
}

fn run_with<E: Display>(
    name: &str,
    default_level: &str,
    export: Export<'_>,
    command: impl Future<Output = Result<u8, E>>,
) -> ExitCode {
    quiet_on_closed_stdout();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return failed(name, format_args!("starting the runtime: {e}")),
    };
    let format = match Format::from_env() {
        Ok(f) => f,
        Err(e) => return failed(name, e),
    };
    let endpoint = match export {
        Export::Off => None,
        Export::Traces { configured } => traces::endpoint(configured),
    };
    let traces = match endpoint {
        Some(endpoint) => {
            let _inside = runtime.enter();
            match Traces::start(name, &endpoint) {
                Ok(t) => Some(t),
                Err(e) => return failed(name, e),
            }
        }
        None => None,
    };
    logging::init(default_level, format, traces.as_ref());
    let outcome = runtime.block_on(command);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => failed(name, format_args!("{e:#}")),
    }
}

fn failed(name: &str, error: impl Display) -> ExitCode {
    eprintln!("{name}: error: {error}");
    ExitCode::FAILURE
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
