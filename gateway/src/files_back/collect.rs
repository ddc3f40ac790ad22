//! Taking an answer's files from its output directory into the store's file area, trusting
//! nothing a tool could have arranged: names are single components, the directory and
//! each file are opened without following links (`openat` + `O_NOFOLLOW`), every check is
//! made on the open file (`fstat`), and the bytes copied are read from that same open
//! file, at most the bound plus one, so a file that grows while it is copied is still
//! caught.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::{Collected, Limits, OutFile, Refusal, photo};

/// The most names of one reply looked at (the worker's own bound).
const MAX_NAMED: usize = 64;
/// The longest name the chat is shown, in bytes (a file system takes 255).
const MAX_SHOWN_NAME: usize = 255;

/// How much of a file's head is kept to judge whether it goes as a photo.
const HEAD: usize = 64 * 1024;

/// Takes `names` from `dir` into `area` within `limits`. Blocking: run it off the async
/// threads. The directory itself is left for the caller to remove.
pub fn collect(dir: &Path, names: &[String], area: &Path, limits: &Limits) -> Collected {
    let mut collected = Collected::default();
    if names.is_empty() {
        return collected;
    }
    // A worker names at most this many (its own bound); one that names more is not
    // followed further, so what the chat is told stays small.
    if names.len() > MAX_NAMED {
        tracing::warn!(
            "the worker named {} files to send; only the first {MAX_NAMED} are looked at",
            names.len()
        );
    }
    let names = &names[..names.len().min(MAX_NAMED)];
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags(OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW))
        .open(dir);
    let dir_file = match opened {
        Ok(file) => file,
        Err(e) => {
            let why = Refusal::Unreadable(format!("the output directory: {e}"));
            collected
                .refused
                .extend(names.iter().map(|n| (shown(n), why.clone())));
            return collected;
        }
    };
    for name in names {
        if collected.files.len() >= limits.max_files {
            collected.refused.push((
                shown(name),
                Refusal::TooMany {
                    max: limits.max_files,
                },
            ));
            continue;
        }
        match take(&dir_file, name, area, limits) {
            Ok(file) => collected.files.push(file),
            Err(refusal) => {
                let name = shown(name);
                tracing::warn!(file = %name, "a file of the answer is not sent: {refusal}");
                collected.refused.push((name, refusal));
            }
        }
    }
    collected
}

/// Whether `dir` is an output directory as the gateway makes it: a directory of its own
/// (not a link), mode 0700, with nothing in it. Looked at through one open file, so a tool
/// cannot swap the directory between the checks.
pub fn is_clean_output_dir(dir: &Path) -> bool {
    let Ok(opened) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags(OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW))
        .open(dir)
    else {
        return false;
    };
    let as_made = opened.metadata().is_ok_and(|m| {
        m.is_dir() && m.mode() & 0o7777 == 0o700 && m.uid() == nix::unistd::geteuid().as_raw()
    });
    if !as_made {
        return false;
    }
    let Ok(mut entries) = nix::dir::Dir::from_fd(opened.into()) else {
        return false;
    };
    entries
        .iter()
        .all(|entry| entry.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b"..")))
}

/// A name as the chat and the log see it: cut to [`MAX_SHOWN_NAME`] bytes.
fn shown(name: &str) -> String {
    crate::text::cut_at_char(name, MAX_SHOWN_NAME).to_string()
}

fn libc_flags(flags: OFlag) -> i32 {
    flags.bits()
}

/// One file: opened, judged, copied.
fn take(dir: &File, name: &str, area: &Path, limits: &Limits) -> Result<OutFile, Refusal> {
    let mut components = Path::new(name).components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) || name.contains('/')
    {
        return Err(Refusal::NotAName);
    }
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // O_NOFOLLOW on a symlink.
        nix::errno::Errno::ELOOP => Refusal::NotARegularFile,
        e => Refusal::Unreadable(e.desc().to_string()),
    })?;
    let mut file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(Refusal::NotARegularFile);
    }
    let too_big = Refusal::TooBig {
        max: limits.max_bytes,
    };
    if meta.len() > limits.max_bytes {
        return Err(too_big);
    }
    let stored = area.join(format!("{:016x}-{}", rand::random::<u64>(), safe(name)));
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_flags(OFlag::O_NOFOLLOW))
        .open(&stored)
        .map_err(|e| Refusal::Unreadable(format!("cannot store it: {e}")))?;
    let copied = copy(&mut file, &mut to, limits.max_bytes);
    let result = match copied {
        Ok(Some((size, head))) => {
            let photo = photo::takes_as_photo(&head, size);
            to.sync_all()
                .map(|()| OutFile {
                    path: stored.clone(),
                    name: name.to_string(),
                    photo,
                })
                .map_err(|e| Refusal::Unreadable(format!("cannot store it: {e}")))
        }
        Ok(None) => Err(too_big),
        Err(e) => Err(Refusal::Unreadable(e.to_string())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&stored);
    }
    result
}

/// Copies at most `max` bytes; `None` when there were more. The size and the head.
fn copy(from: &mut File, to: &mut File, max: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut head = Vec::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok(Some((size, head))),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        if size > max {
            return Ok(None);
        }
        if head.len() < HEAD {
            let room = HEAD - head.len();
            head.extend_from_slice(&buffer[..n.min(room)]);
        }
        to.write_all(&buffer[..n])?;
    }
}

/// The name as a file name in the area (it is only for a person reading the directory).
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1024,
        max_files: 2,
    };

    #[test]
    fn only_regular_files_within_the_bounds_are_taken() {
        let out = tempfile::tempdir().unwrap();
        let area = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("data.csv"), "a,b\n1,2\n").unwrap();
        std::fs::write(out.path().join("big.bin"), vec![0u8; 1025]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.path().join("passwd")).unwrap();
        std::fs::create_dir(out.path().join("sub")).unwrap();
        std::fs::write(out.path().join("linked"), "x").unwrap();
        std::fs::hard_link(out.path().join("linked"), out.path().join("twice")).unwrap();
        let names: Vec<String> = [
            "data.csv", "big.bin", "passwd", "sub", "twice", "../etc", "missing", "data.csv",
            "data.csv",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let collected = collect(out.path(), &names, area.path(), &LIMITS);
        assert_eq!(collected.files.len(), 2, "{collected:?}");
        assert_eq!(collected.files[0].name, "data.csv");
        assert!(!collected.files[0].photo);
        assert_eq!(
            std::fs::read(&collected.files[0].path).unwrap(),
            b"a,b\n1,2\n"
        );
        let refused: Vec<(&str, &Refusal)> = collected
            .refused
            .iter()
            .map(|(n, r)| (n.as_str(), r))
            .collect();
        assert!(matches!(refused[0], ("big.bin", Refusal::TooBig { .. })));
        assert!(matches!(refused[1], ("passwd", Refusal::NotARegularFile)));
        assert!(matches!(refused[2], ("sub", Refusal::NotARegularFile)));
        assert!(matches!(refused[3], ("twice", Refusal::NotARegularFile)));
        assert!(matches!(refused[4], ("../etc", Refusal::NotAName)));
        assert!(matches!(refused[5], ("missing", Refusal::Unreadable(_))));
        assert!(matches!(
            refused[6],
            ("data.csv", Refusal::TooMany { max: 2 })
        ));
        assert_eq!(std::fs::read_dir(area.path()).unwrap().count(), 2);
    }

    #[test]
    fn what_a_worker_names_is_bounded() {
        let out = tempfile::tempdir().unwrap();
        let area = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..1000)
            .map(|i| format!("{}{i}", "x".repeat(1000)))
            .collect();
        let collected = collect(out.path(), &names, area.path(), &LIMITS);
        assert_eq!(collected.refused.len(), MAX_NAMED);
        assert!(
            collected
                .refused
                .iter()
                .all(|(n, _)| n.len() <= MAX_SHOWN_NAME)
        );
    }

    #[test]
    fn an_output_directory_is_clean_only_as_made_and_empty() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        assert!(!is_clean_output_dir(&out), "missing");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(is_clean_output_dir(&out), "as made");
        std::fs::write(out.join("left.txt"), "x").unwrap();
        assert!(!is_clean_output_dir(&out), "a file left in it");
        std::fs::remove_file(out.join("left.txt")).unwrap();
        std::fs::create_dir(out.join(".hidden")).unwrap();
        assert!(!is_clean_output_dir(&out), "a directory left in it");
        std::fs::remove_dir(out.join(".hidden")).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!is_clean_output_dir(&out), "opened to others");
        std::fs::remove_dir(&out).unwrap();
        let real = tempfile::tempdir().unwrap();
        std::fs::set_permissions(real.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(real.path(), &out).unwrap();
        assert!(!is_clean_output_dir(&out), "a link to an empty directory");
        std::fs::remove_file(&out).unwrap();
        std::fs::write(&out, "").unwrap();
        assert!(!is_clean_output_dir(&out), "a file at its name");
    }

    #[test]
    fn a_symlinked_output_directory_is_not_followed() {
        let real = tempfile::tempdir().unwrap();
        std::fs::write(real.path().join("a.txt"), "x").unwrap();
        let parent = tempfile::tempdir().unwrap();
        let link = parent.path().join("out");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let area = tempfile::tempdir().unwrap();
        let collected = collect(&link, &["a.txt".to_string()], area.path(), &LIMITS);
        assert!(collected.files.is_empty());
        assert!(matches!(collected.refused[0].1, Refusal::Unreadable(_)));
    }
}
