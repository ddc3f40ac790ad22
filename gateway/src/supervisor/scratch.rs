//! Each worker's scratch directory: where its tool servers run and may write (their
//! working directory and `TMPDIR`, the one place the sandbox lets them write unless an
//! entry grants more).
//!
//! The gateway makes it (mode 0700, under the runtime directory, which the sandbox hides
//! from every tool, so one worker's tools cannot reach another's scratch) before it starts
//! the worker, and removes it once the worker and its process group are gone, however
//! they went: a killed worker leaves nothing behind. The worker empties it after each
//! job; it is one directory per worker rather than per job because Landlock's grant is on
//! the directory itself, and a pool worker's tool servers outlive a job. Leftovers of a
//! gateway that was itself killed are removed when the next one starts ([`clear`]).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A worker's scratch directory, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A new, empty directory under `root` (made too, 0700, if missing).
    pub fn create(root: &Path) -> io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ScratchDir::create_named(
            root,
            &format!("worker-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        )
    }

    fn create_named(root: &Path, name: &str) -> io::Result<ScratchDir> {
        let path = root.join(name);
        // One mkdir in the usual case (in `per-request` mode this is once a message): the
        // root was made at start ([`clear`]) and the name is new in this run.
        let make = || std::fs::DirBuilder::new().mode(0o700).create(&path);
        match make() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                private_dir(root)?;
                make()?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A leftover of the same name can only be this gateway's own, given up.
                remove_all(&path)?;
                make()?;
            }
            Err(e) => return Err(e),
        }
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        // Usually nothing but the empty output directory is left (a job's tools wrote
        // nothing, or the worker emptied it): two rmdirs here, rather than a trip to the
        // blocking threads and a walk, which cost a `per-request` gateway more per message
        // than the directories themselves.
        if remove_if_all_but_empty(&path) {
            return;
        }
        // A tool may have left many files: never hold up the gateway's async thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || remove(&path));
            }
            Err(_) => remove(&path),
        }
    }
}

/// Removes `path` if it holds nothing but an empty output directory; never follows a
/// link (rmdir does not). False when anything else is there.
fn remove_if_all_but_empty(path: &Path) -> bool {
    let output = path.join(crate::files_back::OUTPUT_DIR);
    let output_gone = match std::fs::remove_dir(&output) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    output_gone && std::fs::remove_dir(path).is_ok()
}

fn remove(path: &Path) {
    if let Err(e) = remove_all(path) {
        tracing::warn!(
            "cannot remove the scratch directory {}: {e}",
            path.display()
        );
    }
}

/// Removes `path` and everything beneath it, giving back to its owner any directory a tool
/// made unreadable or unwritable (never through symlinks).
fn remove_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            allow_owner(path);
            std::fs::remove_dir_all(path)
        }
    }
}

fn allow_owner(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|k| k.is_dir()) {
                allow_owner(&entry.path());
            }
        }
    }
}

/// Removes whatever a previous run left under `root` and makes it again, empty and 0700.
pub fn clear(root: &Path) -> io::Result<()> {
    remove_all(root)?;
    private_dir(root)
}

fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_scratch_directory_is_private_and_goes_with_its_worker_whatever_is_in_it() {
        let root = tempfile::tempdir().unwrap();
        let scratch_root = root.path().join("scratch");
        let scratch = ScratchDir::create(&scratch_root).unwrap();
        let path = scratch.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(&scratch_root).unwrap().mode() & 0o777,
            0o700
        );
        std::fs::create_dir_all(path.join("locked/deeper")).unwrap();
        std::fs::write(path.join("locked/deeper/file"), "x").unwrap();
        std::fs::set_permissions(path.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let other = ScratchDir::create(&scratch_root).unwrap();
        assert_ne!(other.path(), path, "each worker its own");
        drop(scratch);
        assert!(!path.exists(), "left behind");
        assert!(other.path().exists(), "another worker's went too");
    }

    #[test]
    fn an_output_directory_a_tool_replaced_with_a_link_goes_and_its_target_stays() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep"), "x").unwrap();
        let scratch = ScratchDir::create(&root.path().join("scratch")).unwrap();
        let path = scratch.path().to_path_buf();
        std::os::unix::fs::symlink(&elsewhere, path.join(crate::files_back::OUTPUT_DIR)).unwrap();
        drop(scratch);
        assert!(!path.exists(), "left behind");
        assert!(elsewhere.join("keep").exists(), "followed the link");
    }

    #[test]
    fn the_usual_leftover_an_empty_output_directory_goes_at_once() {
        let root = tempfile::tempdir().unwrap();
        let scratch = ScratchDir::create(&root.path().join("scratch")).unwrap();
        let path = scratch.path().to_path_buf();
        std::fs::create_dir(path.join(crate::files_back::OUTPUT_DIR)).unwrap();
        assert!(remove_if_all_but_empty(&path));
        assert!(!path.exists());
        std::fs::create_dir_all(path.join("out/file")).unwrap();
        assert!(
            !remove_if_all_but_empty(&path),
            "not empty: the full removal's"
        );
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn a_leftover_of_the_same_name_is_replaced_by_an_empty_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("worker-3/junk")).unwrap();
        let scratch = ScratchDir::create_named(root.path(), "worker-3").unwrap();
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        assert_eq!(
            std::fs::metadata(scratch.path()).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_previous_runs_leftovers_are_cleared_at_start() {
        let root = tempfile::tempdir().unwrap();
        let scratch_root = root.path().join("scratch");
        std::fs::create_dir_all(scratch_root.join("worker-7/junk")).unwrap();
        clear(&scratch_root).unwrap();
        assert_eq!(std::fs::read_dir(&scratch_root).unwrap().count(), 0);
        assert_eq!(
            std::fs::metadata(&scratch_root).unwrap().mode() & 0o777,
            0o700
        );
    }
}
