//! Transient trouble: a state store that is busy, full or failing for a while, or a full
//! runtime directory, is trouble that passes by itself, never a reason for the service to
//! stay down or to lose or repeat an answer. At start-up it is an exit with a status the
//! units restart (74), not the 78 they leave alone; while running, the gateway says it is
//! degraded, holds the reply the store refused, and sends it once the store takes it,
//! exactly once, also across a restart.
//!
//! The trouble is real: SQLite locking (the test holds `state.db` locked from its own
//! connection, as a backup tool or a stuck process would, and the gateway's statements
//! fail with `SQLITE_BUSY`), and a tmpfs the test mounts with no inode left.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::path::Path;
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply};
use hermes_tests::fake_telegram::{FakeTelegram, SendFault};
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER, eventually};
use hermes_tests::skip::skip;
use nix::sys::signal::Signal;
use serde_json::Value;

hermes_tests::both_modes!(
    a_store_locked_by_another_process_at_start_exits_74_and_the_next_start_answers,
    a_reply_the_store_refuses_is_held_and_sent_once_when_it_recovers_and_never_again,
    a_full_runtime_directory_at_start_exits_74_and_the_next_start_answers,
    pieces_delivered_while_the_store_refuses_writes_go_again_at_most_one_after_a_kill,
);

/// The status the units restart for local trouble that passes (`EX_IOERR`).
const EXIT_IO_ERROR: i32 = 74;

async fn a_store_locked_by_another_process_at_start_exits_74_and_the_next_start_answers(
    mode: WorkerMode,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    // A rollback-journal database held in an exclusive transaction: nobody else can even
    // read it until the transaction ends.
    let holder = rusqlite::Connection::open(state.join("state.db")).expect("db");
    holder
        .execute_batch(
            "PRAGMA journal_mode = DELETE;
             CREATE TABLE held_by_the_test (x);
             BEGIN EXCLUSIVE;
             INSERT INTO held_by_the_test VALUES (1);",
        )
        .expect("lock the store");
    let telegram = FakeTelegram::start().await;
    let provider = FakeProvider::start().await;
    let options = options(mode, &provider);
    let mut gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    let status = gateway.wait_exit(PATIENCE).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_IO_ERROR),
        "a busy store is trouble that passes: a status the units restart, not 78\n{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("database is locked"),
        "{}",
        gateway.log()
    );

    // The lock goes, as it would between two of systemd's restarts: the next start
    // serves.
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);
    let gateway = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    telegram.send_text(USER, USER, "after the lock");
    let replies = telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|m| m.text.as_str()),
        Some("echo: after the lock"),
        "{}",
        gateway.log()
    );
}

async fn a_reply_the_store_refuses_is_held_and_sent_once_when_it_recovers_and_never_again(
    mode: WorkerMode,
) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    let db = rig.gateway.dir.path().join("state/state.db");

    // The job runs with the store fine (its message is stored and taken); the store
    // refuses every write from before the job ends until the test lets go.
    rig.provider
        .push(ProviderReply::Delay(Duration::from_secs(3)));
    rig.telegram
        .send_text(USER, USER, "while the store is locked");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    let holder = lock_for_writing(&db);

    // Degraded, with the store's error as the reason, in status.json and `status`.
    assert!(
        eventually(PATIENCE, || {
            !rig.gateway.status_json()["store"]["failing_since_unix"].is_null()
        })
        .await,
        "{}\n{}",
        rig.gateway.status_json(),
        rig.gateway.log()
    );
    let error = rig.gateway.status_json()["store"]["last_error"].clone();
    assert!(
        error.as_str().is_some_and(|e| e.contains("locked")),
        "{error}"
    );
    let (code, out) = rig.gateway.status_command(&[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the state store cannot save since"), "{out}");
    let (code, out) = rig.gateway.status_command(&["--json"]).await;
    assert_eq!(code, 1, "{out}");
    let json: Value = serde_json::from_str(&out).expect("status --json");
    assert!(json["store"]["failing_since_unix"].is_u64(), "{out}");
    // The job's answer is in, and the store refused it: it is held, not sent without
    // its record.
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("holding it until the store takes it"))
        .await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(
        rig.messages_in(USER).len(),
        1,
        "{:#?}",
        rig.messages_in(USER)
    );

    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);
    let replies = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(
        replies.get(1).map(|m| m.text.as_str()),
        Some("echo: while the store is locked"),
        "{}",
        rig.gateway.log()
    );
    rig.assert_replies(2);
    assert!(
        eventually(PATIENCE, || {
            rig.gateway.status_json()["store"]["failing_since_unix"].is_null()
        })
        .await,
        "{}",
        rig.gateway.status_json()
    );
    let (code, out) = rig.gateway.status_command(&[]).await;
    assert_eq!(code, 0, "healthy again: {out}");

    // The turn is not run again, in this run or the next.
    assert_eq!(
        rig.ask("in the same run").await.text,
        "echo: in the same run"
    );
    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0),
        "{}",
        rig.gateway.log()
    );
    let options = options(mode, &rig.provider);
    let rig = rig.restart_with(|gateway, telegram, _| {
        Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
    });
    assert_eq!(
        rig.ask("after a restart").await.text,
        "echo: after a restart"
    );
    rig.assert_one_reply_each();
    let asked: Vec<String> = rig
        .provider
        .requests()
        .iter()
        .filter_map(|r| r.last_user_text())
        .collect();
    assert_eq!(
        asked,
        [
            "warm up",
            "while the store is locked",
            "in the same run",
            "after a restart"
        ],
        "every turn asked once"
    );
}

async fn a_full_runtime_directory_at_start_exits_74_and_the_next_start_answers(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("run");
    std::fs::create_dir(&mount).expect("mount point");
    let Some(_tmpfs) = Tmpfs::mount(&mount, "size=1m,nr_inodes=64,mode=0700") else {
        return;
    };
    // Files until no inode is left: nothing more can be created there.
    let filler = mount.join("filler");
    std::fs::create_dir(&filler).expect("filler");
    for i in 0.. {
        if std::fs::write(filler.join(i.to_string()), b"").is_err() {
            break;
        }
    }
    let telegram = FakeTelegram::start().await;
    let provider = FakeProvider::start().await;
    let mut options = options(mode, &provider);
    options.env = vec![(
        "RUNTIME_DIRECTORY".into(),
        mount.join("hermes").display().to_string(),
    )];
    let mut gateway = Gateway::start(&options, &telegram.api_url());
    let status = gateway.wait_exit(PATIENCE).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_IO_ERROR),
        "a full runtime directory is trouble that passes: a status the units restart, not 78\n{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("No space left on device"),
        "{}",
        gateway.log()
    );

    std::fs::remove_dir_all(&filler).expect("make room");
    let gateway = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    telegram.send_text(USER, USER, "after making room");
    let replies = telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|m| m.text.as_str()),
        Some("echo: after making room"),
        "{}",
        gateway.log()
    );
    drop(gateway);
}

/// A tmpfs the test mounted, unmounted when dropped (lazily: a process may still be
/// leaving it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` on `at`; None (the test skipped, or failed under CI)
    /// where this machine does not let the test mount one.
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("nosuid,nodev,{options}"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs(at.to_path_buf())),
            Ok(out) => {
                skip(&format!(
                    "cannot mount a tmpfs here ({}): needs root",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!("cannot run mount ({e})"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .output();
    }
}

async fn pieces_delivered_while_the_store_refuses_writes_go_again_at_most_one_after_a_kill(
    mode: WorkerMode,
) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    let db = rig.gateway.dir.path().join("state/state.db");
    // An answer of three messages, committed while the store is fine and held back by
    // Telegram until the store refuses writes.
    let paragraph = |n: usize| format!("{}", n).repeat(3000);
    let long = format!("{}\n\n{}\n\n{}", paragraph(1), paragraph(2), paragraph(3));
    rig.provider.push(ProviderReply::Text(long));
    rig.telegram
        .fail_every_send(Some(SendFault::server_error()));
    rig.telegram.send_text(USER, USER, "a long one");
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    let holder = lock_for_writing(&db);
    rig.telegram.fail_every_send(None);
    let first = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert!(
        first.get(1).is_some_and(|m| m.text.starts_with("111")),
        "{first:#?}"
    );
    // The first piece left, and the store cannot record it: the next piece waits.
    assert!(
        eventually(PATIENCE, || rig.gateway.log().contains("cannot record")).await,
        "{}",
        rig.gateway.log()
    );
    let went_on = eventually(Duration::from_secs(3), || rig.messages_in(USER).len() > 2).await;
    assert!(
        !went_on,
        "a piece went before the one ahead of it was recorded: {:#?}",
        rig.messages_in(USER)
    );

    // Killed while the store is still stuck; the next run on a store that works.
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);
    let options = options(mode, &rig.provider);
    let rig = rig.restart_with(|gateway, telegram, _| {
        Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
    });
    let all = rig.telegram.wait_for_chat_messages(USER, 5, PATIENCE).await;
    assert!(all.iter().any(|m| m.text.starts_with("333")), "{all:#?}");
    assert_eq!(rig.ask("after").await.text, "echo: after");
    let texts: Vec<String> = rig
        .messages_in(USER)
        .iter()
        .map(|m| m.text.chars().take(3).collect())
        .collect();
    assert_eq!(
        texts,
        ["ech", "111", "111", "222", "333", "ech"],
        "the piece that left unrecorded goes once more, nothing else does"
    );
}

fn options(mode: WorkerMode, provider: &FakeProvider) -> GatewayOptions {
    GatewayOptions {
        providers: vec![provider.base_url()],
        ..GatewayOptions::new(mode)
    }
}

/// Holds the write lock of the (WAL) store at `db` until dropped or rolled back: the
/// gateway can still read, and every write it tries fails with `SQLITE_BUSY`.
fn lock_for_writing(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open the store");
    // The gateway may be writing this very moment: wait for it, not fail.
    conn.busy_timeout(PATIENCE).expect("busy timeout");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("lock the store");
    conn
}
