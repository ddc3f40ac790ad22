//! The Landlock half of the sandbox: which paths a tool may read, execute and write, and
//! the scoping of signals and abstract Unix sockets (ABI 6).
//!
//! Landlock only grants. "Everything but the hidden paths" is therefore built as a cover
//! ([`cover`]): from `/` down, a directory with no hidden path beneath it is granted whole,
//! one with a hidden path beneath it is not granted itself (it cannot be listed) but each
//! of its entries is considered in turn, and a hidden path is never granted. Landlock
//! checks the real path of what is opened, so hidden paths are resolved first (symlinks,
//! `..`), and symlinks met in the walk are skipped: their targets are covered where they
//! really are. `/proc` and `/dev` are not covered wholesale but granted entry by entry
//! ([`proc_grants`], [`DEVICES`]).

use std::io;
use std::path::{Component, Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

use super::Policy;

/// The newest Landlock ABI these rules were tested on (Linux 6.18 here). Rights of later
/// ABIs (ABI 9's control of connecting to Unix sockets by path) stay off until tested;
/// older kernels get what they support (best effort).
pub const TESTED_ABI: ABI = ABI::V7;

/// Character devices a tool may open, and whether for writing too. Everything else in
/// `/dev` (disks, `/dev/shm`, pseudo-terminals, `/dev/log`) is out of reach unless a
/// policy grants it.
pub const DEVICES: &[(&str, bool)] = &[
    ("/dev/null", true),
    ("/dev/zero", true),
    ("/dev/full", true),
    ("/dev/tty", true),
    ("/dev/random", false),
    ("/dev/urandom", false),
];

/// One path to grant, and whether it is a directory (a grant to its whole subtree) or
/// another kind of file (rights of files only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    pub dir: bool,
}

/// The Landlock ABI a tool is confined with: this kernel's (0 without Landlock), capped
/// at [`TESTED_ABI`] and at the policy's `landlock_abi_limit`.
pub fn abi_in_effect(policy: &Policy) -> u32 {
    let kernel = kernel_abi().unwrap_or(0);
    let limit = policy.landlock_abi_limit.unwrap_or(u32::MAX);
    kernel.min(TESTED_ABI as u32).min(limit)
}

/// The kernel's Landlock ABI version.
pub fn kernel_abi() -> Result<u32, io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query reads no memory (null attributes, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(v).map_err(|_| io::Error::other("negative ABI"))
}

/// Restricts this thread (and what it later starts) to `policy`'s paths and scopes, with
/// the rights of ABI `abi` (see [`abi_in_effect`]). Best effort: on a kernel with an older
/// Landlock or none, what it lacks is not applied (the probe reports which guarantee is
/// then weaker, and the trampoline makes up for what it can).
pub fn restrict(policy: &Policy, abi: u32) -> Result<RestrictionStatus, landlock::RulesetError> {
    let abi = ABI::from(i32::try_from(abi).unwrap_or(i32::MAX)).min(TESTED_ABI);
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let hidden: Vec<PathBuf> = policy
        .hidden
        .iter()
        .map(|p| real_path(p))
        .chain([PathBuf::from("/proc"), PathBuf::from("/dev")])
        .collect();
    let mut rules: Vec<(Grant, BitFlags<AccessFs>)> = Vec::new();
    rules.extend(
        cover(Path::new("/"), &hidden)
            .into_iter()
            .map(|g| (g, read)),
    );
    rules.extend(proc_grants().into_iter().map(|g| (g, read)));
    for (device, writable) in DEVICES {
        let access = if *writable {
            (read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev) & all
        } else {
            read
        };
        rules.push((file(device), access));
    }
    for path in &policy.readable {
        rules.push((existing(path), read));
    }
    for path in policy.writable.iter().chain([&policy.scratch]) {
        rules.push((existing(path), all));
    }
    let mut ruleset = Ruleset::default().handle_access(all)?;
    if abi >= ABI::V6 {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut ruleset = ruleset.create()?;
    for (grant, access) in rules {
        let access = if grant.dir {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        // A path that vanished or cannot be opened since it was listed is simply not
        // granted: less access, never more.
        let Ok(fd) = PathFd::new(&grant.path) else {
            continue;
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    ruleset.restrict_self()
}

/// The paths that grant read access to everything under `root` except `hidden` (real,
/// absolute paths) and their ancestors.
pub fn cover(root: &Path, hidden: &[PathBuf]) -> Vec<Grant> {
    let mut grants = Vec::new();
    cover_into(root, hidden, &mut grants);
    grants
}

fn cover_into(dir: &Path, hidden: &[PathBuf], grants: &mut Vec<Grant>) {
    if hidden.iter().any(|h| h == dir) {
        return;
    }
    if !hidden.iter().any(|h| h.starts_with(dir)) {
        grants.push(Grant {
            path: dir.to_path_buf(),
            dir: true,
        });
        return;
    }
    // A directory that cannot be listed grants nothing beneath it.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            cover_into(&path, hidden, grants);
        } else if !hidden.contains(&path) {
            grants.push(Grant { path, dir: false });
        }
    }
}

/// `/proc` without the numeric (pid) directories, plus this process's own: after the
/// trampoline's exec it is the tool server's. Processes the server starts do not get
/// theirs (Landlock cannot grant what does not exist yet).
pub fn proc_grants() -> Vec<Grant> {
    let mut grants = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let numeric = name
                .to_str()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if numeric || kind.is_symlink() {
                continue;
            }
            grants.push(Grant {
                path: entry.path(),
                dir: kind.is_dir(),
            });
        }
    }
    // Opened (and so resolved) now, in the process that becomes the tool.
    grants.push(Grant {
        path: PathBuf::from("/proc/self"),
        dir: true,
    });
    grants
}

fn file(path: &str) -> Grant {
    Grant {
        path: PathBuf::from(path),
        dir: false,
    }
}

fn existing(path: &Path) -> Grant {
    Grant {
        path: path.to_path_buf(),
        dir: path.is_dir(),
    }
}

/// `path` as Landlock sees it: symlinks and `..` resolved component by component, as the
/// kernel does. Symlinks are read with `readlink`, not followed with `canonicalize`, so a
/// directory this process cannot search (`/var/lib/private` of a `DynamicUser=` service)
/// still yields the real path. From the first component that does not exist (yet) or
/// cannot be examined, the rest is appended as written, so the cover stops above it.
pub fn real_path(path: &Path) -> PathBuf {
    resolve(PathBuf::from("/"), path, 0)
}

/// The kernel's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: u32 = 40;

fn resolve(base: PathBuf, path: &Path, depth: u32) -> PathBuf {
    let mut resolved = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        base
    };
    let mut examined = true;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            // `resolved` holds no symlink, so its parent is the real one.
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let next = resolved.join(name);
                let link = examined
                    .then(|| std::fs::symlink_metadata(&next))
                    .map(|meta| meta.map(|m| m.file_type().is_symlink()));
                match link {
                    Some(Ok(true)) if depth < MAX_SYMLINKS => match std::fs::read_link(&next) {
                        Ok(target) => resolved = resolve(resolved, &target, depth + 1),
                        Err(_) => {
                            resolved = next;
                            examined = false;
                        }
                    },
                    Some(Ok(_)) => resolved = next,
                    Some(Err(_)) | None => {
                        resolved = next;
                        examined = false;
                    }
                }
            }
        }
    }
    resolved
}

/// Why Landlock could not be used here, as a sentence, from the error of the version
/// query.
pub fn unavailable_reason(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => "not built into this kernel",
        Some(libc::EOPNOTSUPP) => "built in but not enabled at boot (lsm=)",
        Some(libc::EPERM) => {
            "blocked by a system-call filter (systemd's SystemCallFilter= needs \
             landlock_create_ruleset landlock_add_rule landlock_restrict_self)"
        }
        _ => "the kernel refused the version query",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "etc/hermes",
            "etc/ssl/certs",
            "var/lib/hermes/db",
            "var/log",
            "usr/bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "etc/hosts",
            "etc/hermes/hermes.toml",
            "etc/hermes/other",
            "var/lib/hermes/state.db",
            "usr/bin/python3",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("var/lib/hermes"), root.join("etc/state-link"))
            .unwrap();
        std::os::unix::fs::symlink("../var/lib/hermes/db", root.join("etc/relative-link")).unwrap();
        dir
    }

    #[test]
    fn the_cover_grants_everything_but_the_hidden_paths_and_their_ancestors() {
        let dir = tree();
        let root = real_path(dir.path());
        let hidden = vec![
            root.join("etc/hermes/hermes.toml"),
            root.join("var/lib/hermes"),
        ];
        let grants = cover(&root, &hidden);
        let paths: Vec<PathBuf> = grants
            .iter()
            .map(|g| g.path.strip_prefix(&root).unwrap().to_path_buf())
            .collect();
        for granted in ["etc/hosts", "etc/ssl", "etc/hermes/other", "var/log", "usr"] {
            assert!(
                paths.contains(&PathBuf::from(granted)),
                "{granted} in {paths:?}"
            );
        }
        for never in [
            "",
            "etc",
            "etc/hermes",
            "etc/hermes/hermes.toml",
            "var",
            "var/lib",
            "var/lib/hermes",
            "var/lib/hermes/state.db",
            "etc/state-link",
        ] {
            assert!(
                !paths.contains(&PathBuf::from(never)),
                "{never:?} in {paths:?}"
            );
        }
        for grant in &grants {
            assert!(
                !hidden.iter().any(|h| h.starts_with(&grant.path)),
                "{} reaches a hidden path",
                grant.path.display()
            );
        }
    }

    #[test]
    fn a_hidden_path_named_through_a_symlink_or_not_yet_created_is_hidden_where_it_is() {
        let dir = tree();
        let root = real_path(dir.path());
        assert_eq!(
            real_path(&root.join("etc/state-link/state.db")),
            root.join("var/lib/hermes/state.db")
        );
        assert_eq!(
            real_path(&root.join("etc/state-link/not-yet/../later.db")),
            root.join("var/lib/hermes/later.db")
        );
        assert_eq!(
            real_path(&root.join("etc/relative-link/../state.db")),
            root.join("var/lib/hermes/state.db")
        );
        let later = real_path(&root.join("var/log/hermes/later"));
        assert_eq!(later, root.join("var/log/hermes/later"));
        let grants = cover(&root, &[later]);
        assert!(
            !grants.iter().any(|g| g.path == root.join("var/log")),
            "var/log would grant what appears in it later"
        );
    }

    #[test]
    fn proc_is_granted_without_other_processes() {
        let grants = proc_grants();
        assert!(grants.iter().any(|g| g.path == Path::new("/proc/meminfo")));
        assert!(grants.iter().any(|g| g.path == Path::new("/proc/self")));
        assert!(
            !grants.iter().any(|g| g
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))),
            "a pid directory is granted"
        );
    }
}
