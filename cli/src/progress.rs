//! Progress bars on a terminal (files, bytes, rate, ETA); nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_agent::progress::Progress;

/// Draws a [`Progress`] until dropped.
pub struct ProgressView {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressView {
    /// Starts drawing `progress` on stderr if it is a terminal.
    pub fn start(verb: &'static str, progress: Arc<Progress>) -> Self {
        if !std::io::stderr().is_terminal() {
            return ProgressView { bar: None, task: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(verb);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let s = progress.snapshot();
                if s.totals_known {
                    b.set_length(s.bytes_total);
                    b.set_message(format!("{}/{} files", s.files_done, s.files_total));
                } else {
                    b.set_message(format!("{} files (counting…)", s.files_done));
                }
                b.set_position(s.bytes_done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ProgressView { bar: Some(bar), task: Some(task) }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
