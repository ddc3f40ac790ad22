//! A gateway's wall clock moved by the test: libfaketime (Debian's `faketime`) preloaded
//! into the gateway, reading its offset from a file the test rewrites, with the monotonic
//! clock left alone, so only `CLOCK_REALTIME` (what `SystemTime::now()` reads) moves.
//! The workers' environment is the gateway's allowlist, so they keep the real clock.

use std::path::{Path, PathBuf};

/// libfaketime's offset for one gateway: a file it reads at every clock reading.
pub struct FakeClock {
    library: PathBuf,
    dir: tempfile::TempDir,
}

impl FakeClock {
    /// None when libfaketime is not installed.
    pub fn new() -> Option<FakeClock> {
        let clock = FakeClock {
            library: libfaketime()?,
            dir: tempfile::tempdir().ok()?,
        };
        clock.set_secs(0);
        Some(clock)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("faketimerc")
    }

    /// Puts the gateway's wall clock `secs` ahead of the real one. Written whole and
    /// renamed, so no reading sees half a line.
    pub fn set_secs(&self, secs: i64) {
        let tmp = self.dir.path().join("faketimerc.tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("write the offset");
        std::fs::rename(&tmp, self.file()).expect("rename the offset into place");
    }

    /// The gateway's environment: preload the library, read the offset from the file at
    /// every call (the default caches it for 10 s), and leave `CLOCK_MONOTONIC` real.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file().display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// What libfaketime keeps in `/dev/shm` for a process, named by its pid, and removes only
/// when the process exits on its own: the harness kills the gateway. Left there, a later
/// process given the same pid meets a libfaketime error ("shm_open failed: File exists").
pub struct ShmLeftovers(pub i32);

impl Drop for ShmLeftovers {
    fn drop(&mut self) {
        let pid = self.0;
        for name in [
            format!("faketime_shm_{pid}"),
            format!("sem.faketime_sem_{pid}"),
        ] {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
}

/// `libfaketime.so.1` where distributions put it: Debian's multiarch directory of this
/// machine (`/usr/lib/<triplet>/faketime/`), `/usr/lib64`, `/usr/lib`, or a local build.
pub fn libfaketime() -> Option<PathBuf> {
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| {
            dir.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(std::env::consts::ARCH) && n.contains("-linux-"))
        });
    let fixed = [
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/lib64",
    ]
    .map(PathBuf::from);
    multiarch
        .chain(fixed)
        .flat_map(|dir| [dir.join("faketime"), dir])
        .map(|dir| dir.join("libfaketime.so.1"))
        .find(|path| path.is_file())
}

/// The test's own clock, which libfaketime does not touch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
