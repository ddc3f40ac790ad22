//! The directories of files a run keeps, made ready before any job: the files people
//! send (fetched for a job, within `telegram.max_files_total_mb`), and the files sent
//! back, which stay until Telegram took them.

use std::collections::HashSet;
use std::path::PathBuf;

use hermes_config::Config;
use teloxide_core::Bot;

use crate::files_back;
use crate::media::{self, Fetcher};
use crate::setup::Setup;
use crate::store::Stored;

use super::exit;

/// The fetcher of the files people send and the directory of files to send back; or the
/// exit status when either directory cannot be made.
pub(super) fn areas(
    config: &Config,
    setup: &Setup,
    fetching: Bot,
    undelivered: &[Stored],
) -> Result<(Fetcher, PathBuf), i32> {
    // Where versions before issue 21 kept a job's files: a killed run's are not left
    // there for good (the runtime directory is `state/run` outside systemd).
    if let Err(e) = media::wipe(&setup.runtime_dir.join("media")) {
        tracing::warn!(
            "cannot remove the old job files in {}: {e}",
            setup.runtime_dir.display()
        );
    }
    let room = config
        .telegram
        .max_files_total_mb
        .saturating_mul(1024 * 1024);
    let files = setup.state_dir.join(media::FILES_DIR);
    let fetcher = Fetcher::new(fetching, files, room).map_err(|e| {
        tracing::error!(
            "cannot create the job files' directory in {}: {e}",
            setup.state_dir.display()
        );
        exit::for_io(&e)
    })?;
    // Files sent back live in the state directory until Telegram took them; those no
    // committed piece names were left by a run killed before it committed them.
    let outgoing = files_back::area(&setup.state_dir).map_err(|e| {
        tracing::error!(
            "cannot create the directory of files to send in {}: {e}",
            setup.state_dir.display()
        );
        exit::for_io(&e)
    })?;
    let named: HashSet<PathBuf> = undelivered
        .iter()
        .filter_map(|s| s.piece.file.as_ref().map(|f| f.path.clone()))
        .collect();
    match files_back::remove_orphans(&outgoing, &named) {
        0 => {}
        n => tracing::info!("removed {n} file(s) to send that no reply named"),
    }
    Ok((fetcher, outgoing))
}
