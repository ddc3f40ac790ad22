//! Voice notes, photos and files: transcribed, seen, read, or refused with a reply that
//! says why; fetched by the gateway alone (the download URL holds the token) within a size
//! and a time bound, into a per-job directory that is gone when the job ends, however it
//! ends; and everything else a user can send (a sticker, a location) answered with what
//! the bot understands, never with silence.
//!
//! Real binaries against the fake Telegram (`getFile` and the file download path) and the
//! fake provider (`/audio/transcriptions`, image content parts), in both worker modes.

use base64::Engine;
use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply, image_urls};
use hermes_tests::fake_telegram::{Body, TOKEN};
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

hermes_tests::both_modes!(
    a_voice_note_is_transcribed_answered_and_kept_as_its_words,
    a_photo_with_caption_reaches_the_provider_as_an_image_part_and_the_caption,
    a_photo_goes_to_the_next_provider_with_vision_or_gets_a_clear_reply,
    a_text_or_pdf_document_reaches_the_provider_as_text_and_other_files_are_refused_by_name,
    an_oversized_file_gets_the_size_reply_and_nothing_is_downloaded_past_the_bound,
    a_worker_killed_mid_transcription_gives_the_crash_reply_and_leaves_no_file,
    transcription_402_gives_the_quota_reply,
    a_voice_note_without_transcription_configured_is_told_voice_is_not_enabled,
    a_sticker_or_a_location_gets_what_the_bot_understands,
    a_voice_note_received_before_a_gateway_kill_9_is_answered_once_after_the_restart,
    the_worker_never_sees_the_token,
    an_edited_message_is_not_answered_again,
    stop_during_a_download_ends_it_with_one_reply,
);

/// A rig whose provider `p0` transcribes (`[transcription]`) and reads images.
async fn media_rig(mode: WorkerMode, customize: impl FnOnce(&mut GatewayOptions)) -> Rig {
    Rig::start(mode, |o| {
        o.extra_toml = "\n[transcription]\nprovider = \"p0\"\n".into();
        o.vision = vec![0];
        customize(o);
    })
    .await
}

/// Where the gateway keeps the files of running jobs: the state directory's `files/`.
fn job_files(rig: &Rig) -> Vec<String> {
    let dir = rig.gateway.dir.path().join("state/files");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

fn chat_requests(provider: &FakeProvider) -> Vec<hermes_tests::fake_provider::ProviderRequest> {
    provider
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .collect()
}

fn transcription_requests(
    provider: &FakeProvider,
) -> Vec<hermes_tests::fake_provider::ProviderRequest> {
    provider
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/audio/transcriptions"))
        .collect()
}

async fn a_voice_note_is_transcribed_answered_and_kept_as_its_words(mode: WorkerMode) {
    let mut rig = media_rig(mode, |_| {}).await;
    let said = "what is the capital of France";
    let reply = rig
        .reply_to(USER, "a voice note", |t| {
            t.send_voice(USER, USER, said.as_bytes(), 3);
        })
        .await;
    assert!(
        reply.text.starts_with(&format!("🎤 “{said}”")),
        "the transcript line: {}",
        reply.text
    );
    assert!(
        reply.text.contains(&format!("echo: {said}")),
        "{}",
        reply.text
    );
    let heard = transcription_requests(&rig.provider);
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].path, "/v1/audio/transcriptions");
    assert_eq!(
        heard[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    assert_eq!(heard[0].body["model"], "whisper-1");
    assert_eq!(heard[0].body["file_name"], "voice.ogg");
    assert_eq!(heard[0].body["file_bytes"], said.len());
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].last_user_text().as_deref(), Some(said));
    assert_eq!(rig.telegram.downloads().len(), 1);
    assert!(
        job_files(&rig).is_empty(),
        "left behind: {:?}",
        job_files(&rig)
    );
    // The transcript is the user's turn in the conversation.
    rig.ask("and its population?").await;
    let follow_up = chat_requests(&rig.provider).pop().unwrap();
    assert_eq!(follow_up.body["messages"][0]["content"], said);
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_photo_with_caption_reaches_the_provider_as_an_image_part_and_the_caption(
    mode: WorkerMode,
) {
    let mut rig = media_rig(mode, |_| {}).await;
    let small: &[u8] = b"\xff\xd8 a small jpeg";
    let large: &[u8] = b"\xff\xd8 the largest jpeg, under the bound";
    let mut files = Vec::new();
    let reply = rig
        .reply_to(USER, "a photo", |t| {
            files = t
                .send_photo(USER, USER, &[small, large], Some("what is this?"))
                .1;
        })
        .await;
    assert_eq!(reply.text, "echo: what is this?");
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 1);
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(large)
    );
    assert_eq!(
        asked[0].body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        ])
    );
    let downloads = rig.telegram.downloads();
    assert_eq!(downloads.len(), 1, "only the size chosen is fetched");
    assert_eq!(downloads[0].path, files[1].path, "the largest size");
    assert!(job_files(&rig).is_empty());
    // The image goes with its own turn only; later turns carry its placeholder.
    rig.ask("and the colour?").await;
    let follow_up = chat_requests(&rig.provider).pop().unwrap();
    assert!(
        image_urls(&follow_up.body).is_empty(),
        "the image was sent again"
    );
    assert_eq!(
        follow_up.body["messages"][0]["content"],
        "[photo]\nwhat is this?"
    );
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_photo_goes_to_the_next_provider_with_vision_or_gets_a_clear_reply(mode: WorkerMode) {
    let seeing = FakeProvider::start().await;
    let seeing_url = seeing.base_url();
    let mut rig = media_rig(mode, |o| {
        o.providers.push(seeing_url);
        o.vision = vec![1];
    })
    .await;
    // The first provider's model would refuse an image part, as OpenAI does.
    rig.provider.set_vision(false);
    let reply = rig
        .reply_to(USER, "a photo", |t| {
            t.send_photo(USER, USER, &[b"\xff\xd8 jpeg"], Some("look"));
        })
        .await;
    assert_eq!(reply.text, "echo: look");
    assert_eq!(
        rig.provider.request_count(),
        0,
        "sent to a provider without vision"
    );
    assert_eq!(seeing.image_urls().len(), 1);
    assert_eq!(chat_requests(&seeing)[0].model(), Some("model-1"));
    rig.assert_follow_up("/help", "/new").await;

    // No provider with vision: a clear reply, and nothing fetched.
    let mut blind = Rig::start(mode, |_| {}).await;
    let reply = blind
        .reply_to(USER, "a photo", |t| {
            t.send_photo(USER, USER, &[b"\xff\xd8 jpeg"], None);
        })
        .await;
    assert!(
        reply.text.contains("can't look at images"),
        "{}",
        reply.text
    );
    assert_eq!(blind.provider.request_count(), 0);
    assert_eq!(blind.telegram.calls("getFile"), 0);
    assert!(blind.telegram.downloads().is_empty());
    blind.assert_follow_up("/help", "/new").await;
}

async fn a_text_or_pdf_document_reaches_the_provider_as_text_and_other_files_are_refused_by_name(
    mode: WorkerMode,
) {
    let mut rig = media_rig(mode, |_| {}).await;
    let reply = rig
        .reply_to(USER, "a Markdown file", |t| {
            t.send_document(
                USER,
                USER,
                "notes.md",
                Some("text/markdown"),
                b"# Plan\nbuy milk",
                Some("summarize"),
            );
        })
        .await;
    assert!(reply.text.contains("summarize"), "{}", reply.text);
    let asked = chat_requests(&rig.provider).pop().unwrap();
    assert_eq!(
        asked.last_user_text().as_deref(),
        Some("File notes.md:\n# Plan\nbuy milk\n(end of notes.md)\nsummarize")
    );
    // Source code sent as octet-stream is taken by its name.
    rig.reply_to(USER, "a source file", |t| {
        t.send_document(USER, USER, "main.rs", None, b"fn main() {}", None);
    })
    .await;
    let asked = chat_requests(&rig.provider).pop().unwrap();
    assert!(
        asked
            .last_user_text()
            .unwrap()
            .contains("File main.rs:\nfn main() {}"),
        "{asked:?}"
    );
    // A PDF: its text, extracted in the worker.
    rig.reply_to(USER, "a PDF", |t| {
        let pdf = hermes_tests::pdf::one_page("Quarterly revenue grew 12 percent");
        t.send_document(
            USER,
            USER,
            "report.pdf",
            Some("application/pdf"),
            &pdf,
            Some("the gist?"),
        );
    })
    .await;
    let asked = chat_requests(&rig.provider).pop().unwrap();
    let text = asked.last_user_text().unwrap();
    assert!(text.starts_with("File report.pdf:\n"), "{text:?}");
    assert!(
        text.contains("Quarterly revenue grew 12 percent"),
        "{text:?}"
    );
    assert!(text.ends_with("(end of report.pdf)\nthe gist?"), "{text:?}");
    let downloads = rig.telegram.downloads().len();

    // A type the bot cannot read: refused by its name, never fetched.
    let reply = rig
        .reply_to(USER, "a binary", |t| {
            t.send_document(
                USER,
                USER,
                "setup.exe",
                Some("application/x-msdownload"),
                b"MZ",
                None,
            );
        })
        .await;
    assert!(
        reply.text.contains("I can't read setup.exe"),
        "{}",
        reply.text
    );
    assert!(
        reply.text.contains("PDF"),
        "names what is supported: {}",
        reply.text
    );
    assert_eq!(rig.telegram.downloads().len(), downloads);
    // A "text" file that is not UTF-8: read by the worker, refused in plain words.
    let reply = rig
        .reply_to(USER, "a broken CSV", |t| {
            t.send_document(
                USER,
                USER,
                "data.csv",
                Some("text/csv"),
                &[0xff, 0xfe, 0x00],
                None,
            );
        })
        .await;
    assert!(
        reply
            .text
            .contains("couldn't read data.csv: it is not UTF-8 text"),
        "{}",
        reply.text
    );
    assert!(job_files(&rig).is_empty());
    rig.assert_follow_up("/help", "/new").await;
}

async fn an_oversized_file_gets_the_size_reply_and_nothing_is_downloaded_past_the_bound(
    mode: WorkerMode,
) {
    let mut rig = media_rig(mode, |o| {
        // A download the bound does not stop would run into this instead: another reply.
        o.telegram_toml
            .push_str("max_file_mb = 1\ndownload_timeout_secs = 5\n");
    })
    .await;
    // Telegram states 2 MiB: refused before anything is fetched.
    let big = vec![b'a'; 2 * 1024 * 1024];
    let reply = rig
        .reply_to(USER, "a 2 MiB file", |t| {
            t.send_document(USER, USER, "big.txt", Some("text/plain"), &big, None);
        })
        .await;
    assert!(
        reply.text.contains("too big for me (2 MB)"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("up to 1 MB"), "{}", reply.text);
    assert_eq!(rig.telegram.calls("getFile"), 0);
    assert!(rig.telegram.downloads().is_empty());

    // Telegram states 1000 bytes, and sends 3 MiB without a length: the download is
    // stopped at the bound, and the file never reaches the worker.
    let reply = rig
        .reply_to(USER, "a file larger than stated", |t| {
            let file = t.add_file_stating(&vec![b'b'; 3 * 1024 * 1024], Some(1000), Body::Chunked);
            t.send_document_file(USER, USER, "liar.txt", Some("text/plain"), &file, None);
        })
        .await;
    assert!(reply.text.contains("too big for me"), "{}", reply.text);
    assert_eq!(rig.telegram.downloads().len(), 1);
    // The same, from a body that never ends: the bound ends the download, not the
    // download's time bound (which would be "couldn't fetch your file").
    let reply = rig
        .reply_to(USER, "a file that never ends", |t| {
            let file =
                t.add_file_stating(&vec![b'c'; 2 * 1024 * 1024], Some(1000), Body::NeverEnds);
            t.send_document_file(USER, USER, "endless.txt", Some("text/plain"), &file, None);
        })
        .await;
    assert!(reply.text.contains("too big for me"), "{}", reply.text);
    assert_eq!(rig.telegram.downloads().len(), 2);
    assert_eq!(rig.provider.request_count(), 0, "the file reached a job");
    let log = rig.gateway.log();
    assert!(log.contains("over the 1048576-byte bound"), "{log}");
    assert!(
        job_files(&rig).is_empty(),
        "left behind: {:?}",
        job_files(&rig)
    );
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_worker_killed_mid_transcription_gives_the_crash_reply_and_leaves_no_file(
    mode: WorkerMode,
) {
    let mut rig = media_rig(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push_transcription(ProviderReply::Hang);
    let before = rig.telegram.sent_to(USER).len();
    rig.telegram.send_voice(USER, USER, b"never heard", 2);
    assert!(
        rig.provider.wait_for_requests(1, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(job_files(&rig).len(), 1, "the job's files while it runs");
    for worker in rig.gateway.workers() {
        let _ = kill(Pid::from_raw(worker.pid), Signal::SIGKILL);
    }
    let replies = rig
        .telegram
        .wait_for_chat_messages(USER, before + 1, PATIENCE)
        .await;
    let reply = replies.get(before).expect("no reply after the kill");
    assert!(reply.text.contains("agent crashed"), "{}", reply.text);
    rig.assert_replies(before + 1);
    assert!(
        job_files(&rig).is_empty(),
        "left behind: {:?}",
        job_files(&rig)
    );
    rig.assert_no_stray_processes().await;
    rig.assert_follow_up("/help", "/new").await;
}

async fn transcription_402_gives_the_quota_reply(mode: WorkerMode) {
    let mut rig = media_rig(mode, |_| {}).await;
    rig.provider.push_transcription(ProviderReply::seed_402());
    let reply = rig
        .reply_to(USER, "a voice note", |t| {
            t.send_voice(USER, USER, b"hello", 1);
        })
        .await;
    assert!(reply.text.contains("quota or balance"), "{}", reply.text);
    assert_eq!(
        transcription_requests(&rig.provider).len(),
        1,
        "never retried"
    );
    assert!(chat_requests(&rig.provider).is_empty());
    assert!(job_files(&rig).is_empty());
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_voice_note_without_transcription_configured_is_told_voice_is_not_enabled(
    mode: WorkerMode,
) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let reply = rig
        .reply_to(USER, "a voice note", |t| {
            t.send_voice(USER, USER, b"hello", 1);
        })
        .await;
    assert!(
        reply.text.contains("Voice messages are not enabled"),
        "{}",
        reply.text
    );
    assert_eq!(rig.provider.request_count(), 0);
    assert!(rig.telegram.downloads().is_empty());
    rig.assert_follow_up("/help", "/new").await;
}

async fn a_sticker_or_a_location_gets_what_the_bot_understands(mode: WorkerMode) {
    let mut rig = media_rig(mode, |_| {}).await;
    let reply = rig
        .reply_to(USER, "a sticker", |t| {
            t.send_sticker(USER, USER);
        })
        .await;
    assert!(
        reply.text.contains("I can't use stickers"),
        "{}",
        reply.text
    );
    assert!(
        reply
            .text
            .contains("I understand text messages, voice notes"),
        "{}",
        reply.text
    );
    let reply = rig
        .reply_to(USER, "a location", |t| {
            t.send_location(USER, USER);
        })
        .await;
    assert!(
        reply.text.contains("I can't use locations"),
        "{}",
        reply.text
    );
    assert_eq!(rig.provider.request_count(), 0);
    rig.assert_follow_up("hello", "echo: hello").await;
}

async fn a_voice_note_received_before_a_gateway_kill_9_is_answered_once_after_the_restart(
    mode: WorkerMode,
) {
    let rig = media_rig(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push_transcription(ProviderReply::Hang);
    let said = "remember the milk";
    let id = rig.telegram.send_voice(USER, USER, said.as_bytes(), 2);
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    assert!(
        rig.telegram.wait_for_ack(id, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    rig.gateway.signal(Signal::SIGKILL);
    let media = rig.gateway.dir.path().join("state/files");
    // Where versions before issue 21 kept them, under the runtime directory.
    let old_place = rig.gateway.dir.path().join("state/run/media");
    let Rig {
        telegram,
        provider,
        mut gateway,
        ..
    } = rig;
    assert!(gateway.wait_exit(PATIENCE).await.is_some());
    assert!(telegram.sent_to(USER).is_empty());
    // What the killed run left: its job's files, and (standing for anything else) a
    // stray file of no job.
    assert_eq!(
        std::fs::read_dir(&media).unwrap().count(),
        1,
        "the job's files"
    );
    std::fs::write(media.join("stray"), b"left by a killed run").unwrap();
    std::fs::create_dir_all(old_place.join("job-9")).unwrap();
    std::fs::write(
        old_place.join("job-9/0-old.ogg"),
        b"left by an older version",
    )
    .unwrap();
    let options = GatewayOptions {
        providers: vec![provider.base_url()],
        extra_toml: "\n[transcription]\nprovider = \"p0\"\n".into(),
        vision: vec![0],
        ..GatewayOptions::new(mode)
    };
    let restarted = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    let replies = telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert!(
        replies
            .first()
            .is_some_and(|r| r.text.contains(&format!("echo: {said}"))),
        "{replies:?}\n{}",
        restarted.log()
    );
    assert_eq!(
        telegram.downloads().len(),
        2,
        "fetched again after the restart"
    );
    // Once: the next message's answer is the very next reply.
    telegram.send_text(USER, USER, "after");
    let replies = telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1].text, "echo: after");
    assert!(
        !media.join("stray").exists(),
        "the killed run's files were not wiped at start-up"
    );
    assert_eq!(std::fs::read_dir(&media).unwrap().count(), 0);
    assert!(!old_place.exists(), "the old place was not wiped");
}

/// While a voice note's job runs, the worker's environment, its command line and every
/// file it has open or was given (the job's directory) hold neither the token nor the
/// download URL; and a failed download's error, logged by the gateway, does not either.
async fn the_worker_never_sees_the_token(mode: WorkerMode) {
    let rig = media_rig(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push_transcription(ProviderReply::Hang);
    rig.telegram.send_voice(USER, USER, b"secret plans", 2);
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let workers = rig.gateway.workers();
    assert!(!workers.is_empty());
    let holds_token = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        text.contains(TOKEN) || text.contains("/file/bot")
    };
    // A pool worker other than the job's may be replaced while this looks (it is gone
    // then: nothing of it to read); the job's own worker hangs until `/stop`, so at least
    // one is read whole.
    let mut read_whole = 0;
    for worker in &workers {
        let pid = worker.pid;
        let (Ok(environ), Ok(cmdline), Ok(fds)) = (
            std::fs::read(format!("/proc/{pid}/environ")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
            std::fs::read_dir(format!("/proc/{pid}/fd")),
        ) else {
            continue;
        };
        read_whole += 1;
        assert!(
            !holds_token(&environ),
            "the worker's environ holds the token"
        );
        assert!(
            !holds_token(&cmdline),
            "the worker's cmdline holds the token"
        );
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.is_file() {
                let bytes = std::fs::read(&target).unwrap_or_default();
                assert!(
                    !holds_token(&bytes),
                    "the worker has {} open, which holds the token",
                    target.display()
                );
            }
        }
    }
    assert!(read_whole >= 1, "no worker could be read: {workers:?}");
    let given = job_files(&rig);
    assert_eq!(given.len(), 1);
    for entry in walk(std::path::Path::new(&given[0])) {
        assert!(!holds_token(entry.display().to_string().as_bytes()));
        assert!(!holds_token(&std::fs::read(&entry).unwrap()));
    }
    // The transcription hangs until the deadline; end it.
    rig.telegram.send_text(USER, USER, "/stop");
    rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;

    // A download that fails: its error reaches the log, never the token with it.
    rig.telegram.fail_downloads(true);
    let reply = rig
        .reply_to(USER, "a voice note", |t| {
            t.send_voice(USER, USER, b"hello", 1);
        })
        .await;
    assert!(
        reply.text.contains("couldn't fetch your file"),
        "{}",
        reply.text
    );
    let log = rig.gateway.log();
    assert!(log.contains("download failed"), "{log}");
    assert!(!log.contains(TOKEN), "the log holds the token:\n{log}");
    rig.assert_replies(2);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The README says: an edit is not answered again (answering it would be a second answer
/// to one question). The gateway does not ask Telegram for edits at all.
async fn an_edited_message_is_not_answered_again(mode: WorkerMode) {
    let mut rig = media_rig(mode, |_| {}).await;
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    let allowed = rig.telegram.allowed_updates().unwrap_or_default();
    assert!(
        !allowed.iter().any(|k| k == "edited_message"),
        "edits are asked for: {allowed:?}"
    );
    rig.telegram
        .edit_user_message(USER, USER, 1, "hello, edited");
    assert_eq!(
        rig.telegram.withheld_updates().len(),
        1,
        "the edit was delivered"
    );
    rig.assert_follow_up("next", "echo: next").await;
    assert_eq!(chat_requests(&rig.provider).len(), 2);
}

/// A media job is a job like any other: `/stop` while its file is still coming ends it
/// at once (one reply for both messages), and its files go with it.
async fn stop_during_a_download_ends_it_with_one_reply(mode: WorkerMode) {
    let mut rig = media_rig(mode, |o| {
        o.telegram_toml.push_str("download_timeout_secs = 600\n");
    })
    .await;
    rig.telegram.send_text(USER, USER, "ready?");
    rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    let file = rig
        .telegram
        .add_file_stating(b"slow", Some(4), Body::NeverEnds);
    rig.telegram
        .send_document_file(USER, USER, "slow.txt", Some("text/plain"), &file, None);
    let downloads = rig.telegram.downloads();
    let started =
        hermes_tests::harness::eventually(PATIENCE, || !rig.telegram.downloads().is_empty()).await;
    assert!(started, "{downloads:?}\n{}", rig.gateway.log());
    let reply = rig
        .reply_to(USER, "/stop", |t| {
            t.send_text(USER, USER, "/stop");
        })
        .await;
    assert_eq!(
        reply.text,
        "⏹ Stopped. Send a new message whenever you like."
    );
    assert_eq!(
        rig.provider.request_count(),
        1,
        "only the first message reached a job"
    );
    assert!(
        job_files(&rig).is_empty(),
        "left behind: {:?}",
        job_files(&rig)
    );
    rig.assert_replies(2);
    rig.assert_follow_up("/help", "/new").await;
}

/// `hermes-worker ask --file`: the media path without Telegram, for an operator debugging
/// a transcription or vision problem. Audio is transcribed (the transcript printed), an
/// image goes as an image part to the provider with vision, a document as its text, and
/// a transcription failure is the typed failure, as for a chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_with_a_file_runs_the_same_media_path() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"main\"\nbase_url = \"{}\"\nmodel = \"m\"\n\
             api_key_env = \"HERMES_TEST_KEY\"\nvision = true\n\n\
             [transcription]\nprovider = \"main\"\nmodel = \"whisper-large\"\n",
            provider.base_url()
        ),
    )
    .unwrap();
    let ask = |file: &std::path::Path, question: &str| {
        tokio::process::Command::new(&hermes_tests::harness::binaries().worker)
            .args(["ask", "--config"])
            .arg(&config)
            .arg("--file")
            .arg(file)
            .arg(question)
            .env("HERMES_TEST_KEY", hermes_tests::fake_provider::API_KEY)
            .output()
    };
    let voice = dir.path().join("note.ogg");
    std::fs::write(&voice, "book a table for two").unwrap();
    let out = ask(&voice, "").await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("transcribing with main"), "{stderr}");
    assert!(
        stderr.contains("transcript: book a table for two"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echo: book a table for two"
    );
    assert_eq!(
        transcription_requests(&provider)[0].body["model"],
        "whisper-large"
    );

    let photo = dir.path().join("cat.png");
    std::fs::write(&photo, b"\x89PNG fake").unwrap();
    let out = ask(&photo, "what is this?").await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("sent as an image part to main"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echo: what is this?"
    );
    assert_eq!(
        provider.image_urls(),
        [format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake")
        )]
    );

    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "milk, eggs").unwrap();
    let out = ask(&notes, "sum up").await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echo: File notes.txt:\nmilk, eggs\n(end of notes.txt)\nsum up"
    );

    provider.push_transcription(ProviderReply::seed_402());
    let out = ask(&voice, "").await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: quota_exhausted (provider main)"),
        "{stderr}"
    );
}

hermes_tests::both_modes!(a_document_whose_name_passes_name_max_is_saved_and_read);

/// A file name is cut to fit NAME_MAX (255 bytes) on disk, on a character boundary and
/// with its extension kept (issue 21.11); the model still reads the name as sent.
async fn a_document_whose_name_passes_name_max_is_saved_and_read(mode: WorkerMode) {
    let mut rig = media_rig(mode, |_| {}).await;
    // 300 bytes of UTF-8: 74 four-byte letters (CJK Extension B) and ".txt".
    let name = format!("{}.txt", "\u{20000}".repeat(74));
    assert_eq!(name.len(), 300);
    let reply = rig
        .reply_to(USER, "a file with a 300-byte name", |t| {
            t.send_document(
                USER,
                USER,
                &name,
                Some("text/plain"),
                b"the long one",
                Some("read it"),
            );
        })
        .await;
    assert!(reply.text.contains("read it"), "{}", reply.text);
    let asked = chat_requests(&rig.provider)
        .pop()
        .expect("the model was asked");
    assert_eq!(
        asked.last_user_text(),
        Some(format!(
            "File {name}:\nthe long one\n(end of {name})\nread it"
        ))
    );
    rig.assert_follow_up("/help", "/new").await;
}

hermes_tests::both_modes!(the_files_of_running_turns_stay_on_disk_within_their_room);

/// A turn's files go to the state directory's `files/`, on disk, not to the runtime
/// directory (RAM under systemd), and all chats' files share `telegram.max_files_total_mb`
/// (issue 21.10): a turn whose files do not fit beside another's waits for it to end,
/// fetching nothing meanwhile, and is answered after.
async fn the_files_of_running_turns_stay_on_disk_within_their_room(mode: WorkerMode) {
    const OTHER: i64 = 1002;
    let runtime = tempfile::tempdir().expect("tempdir");
    let mut rig = media_rig(mode, |o| {
        o.allowed_users = vec![USER, OTHER];
        o.job_timeout_secs = 60;
        o.telegram_toml
            .push_str("max_file_mb = 1\nmax_files_total_mb = 1\n");
        o.env.push((
            "RUNTIME_DIRECTORY".into(),
            runtime.path().display().to_string(),
        ));
    })
    .await;
    rig.provider.push(ProviderReply::Hang);
    rig.provider.push(ProviderReply::Text("read".into()));
    let text = vec![b'a'; 700 * 1024];
    rig.telegram
        .send_document(USER, USER, "first.txt", Some("text/plain"), &text, None);
    assert!(
        rig.provider.wait_for_requests(1, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    let held = job_files(&rig);
    assert_eq!(held.len(), 1, "the job's files while it runs: {held:?}");
    assert!(
        !runtime.path().join("media").exists(),
        "files in the runtime directory"
    );

    // 700 KB more would pass the 1 MB room: the second chat's turn waits, unfetched.
    rig.telegram
        .send_document(OTHER, OTHER, "second.txt", Some("text/plain"), &text, None);
    assert!(
        hermes_tests::harness::eventually(PATIENCE, || rig.gateway.log().contains("wait for room"))
            .await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.telegram.calls("getFile"), 1, "fetched beyond the room");
    assert!(rig.telegram.sent_to(OTHER).is_empty());

    // The first turn ends: its room is the second's, which is answered.
    let stopped = rig
        .reply_to(USER, "/stop", |t| {
            t.send_text(USER, USER, "/stop");
        })
        .await;
    assert!(stopped.text.starts_with("⏹ Stopped"), "{}", stopped.text);
    let answered = rig
        .telegram
        .wait_for_chat_messages(OTHER, 1, PATIENCE)
        .await;
    assert_eq!(answered.len(), 1, "{}", rig.gateway.log());
    assert_eq!(answered[0].text, "read");
    let asked = chat_requests(&rig.provider)
        .pop()
        .expect("the model was asked");
    assert!(
        asked
            .last_user_text()
            .is_some_and(|t| t.starts_with("File second.txt:\naaa")),
        "{:?}",
        asked
            .last_user_text()
            .map(|t| t.chars().take(80).collect::<String>())
    );
    rig.assert_replies_in(OTHER, 1);
    assert_eq!(rig.telegram.calls("getFile"), 2);
    assert!(
        hermes_tests::harness::eventually(PATIENCE, || job_files(&rig).is_empty()).await,
        "left behind: {:?}",
        job_files(&rig)
    );
    rig.assert_follow_up("/help", "/new").await;
}

// A file refused or not fetched in a burst is answered with why, and the rest of the
// burst still goes to the model (issue 21.7).
hermes_tests::both_modes!(a_bad_file_in_a_burst_is_refused_and_the_questions_are_answered);

async fn a_bad_file_in_a_burst_is_refused_and_the_questions_are_answered(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    // A first job holds the chat, so what follows waits and is taken as one turn.
    rig.provider.push_for(
        "first",
        ProviderReply::Delay(std::time::Duration::from_secs(2)),
    );
    rig.telegram.send_text(USER, USER, "first");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    rig.telegram.send_text(USER, USER, "what is 2+2?");
    rig.telegram.send_document(
        USER,
        USER,
        "setup.exe",
        Some("application/x-msdownload"),
        b"MZ",
        Some("and run this"),
    );
    rig.telegram.send_voice(USER, USER, b"hello", 1);
    // Telegram's file server unreachable: this one cannot be fetched.
    rig.telegram.fail_downloads(true);
    rig.telegram
        .send_document(USER, USER, "notes.txt", Some("text/plain"), b"hi", None);
    rig.telegram.send_text(USER, USER, "and 3+3?");
    let replies = rig.telegram.wait_for_chat_messages(USER, 5, PATIENCE).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), 5, "{texts:?}\n{}", rig.gateway.log());
    assert_eq!(texts[0], "echo: first");
    assert!(texts[1].contains("I can't read setup.exe"), "{texts:?}");
    assert!(
        texts[2].contains("Voice messages are not enabled"),
        "{texts:?}"
    );
    assert!(texts[3].contains("couldn't fetch your file"), "{texts:?}");
    assert_eq!(texts[4], "echo: what is 2+2?\nand 3+3?");
    let asked = chat_requests(&rig.provider);
    assert_eq!(asked.len(), 2, "the burst is one job");
    assert_eq!(
        asked[1].last_user_text().as_deref(),
        Some("what is 2+2?\nand 3+3?"),
        "the model is asked the questions, without the refused files or their captions"
    );
    rig.assert_replies(5);
    rig.telegram.fail_downloads(false);
    rig.assert_follow_up("/help", "/new").await;
}
