//! The repository flags (shared with `lifeboat-agent`), and what the CLI
//! does after writing to a replicated repository.

use anyhow::{Context, Result};
use indicatif::HumanBytes;
pub use lifeboat_common::repo::engine::settings::RepoArgs;
use lifeboat_common::store::OpenedStore;

/// After writing to a replicated repository: copies what the outbox holds
/// to every secondary that answers, and says what is still waiting.
pub async fn settle(stores: &OpenedStore) -> Result<()> {
    let OpenedStore::Replicated(r) = stores else { return Ok(()) };
    let lag = r.settle().await.context("copying the outbox to the secondary stores")?;
    for l in lag.iter().filter(|l| l.objects > 0) {
        let age = l.oldest_age().map_or(0, |d| d.as_secs());
        eprintln!(
            "copy lag: {} objects ({}) wait in the outbox {} for {}, the oldest for {age}s; the next command that reaches it (or `lifeboat repo sync`) copies them",
            l.objects,
            HumanBytes(l.bytes),
            r.outbox().root().display(),
            l.store
        );
    }
    Ok(())
}
