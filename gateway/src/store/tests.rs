//! The store across reopens, migrations and damage.

use hermes_protocol::{ChatMessage, Role, ToolCall};
use rusqlite::{Connection, params};

use super::*;

/// The tables and indexes of `conn` as SQLite keeps their text: tables first, each kind
/// in the order made.
fn schema_of(conn: &Connection) -> Vec<String> {
    let mut st = conn
        .prepare(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
             ORDER BY type = 'index', rowid",
        )
        .unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_new_store_is_made_with_the_schema_its_migrations_make() {
    let migrated = Connection::open_in_memory().unwrap();
    for migration in MIGRATIONS {
        migrated.execute_batch(migration).unwrap();
    }
    assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    let mut expected = schema_of(&migrated);
    let made = Connection::open_in_memory().unwrap();
    made.execute_batch(SCHEMA).unwrap();
    let mut found = schema_of(&made);
    let header: String = SCHEMA
        .lines()
        .take_while(|l| l.starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file: String = expected.iter().map(|sql| format!("{sql};\n")).collect();
    expected.sort();
    found.sort();
    assert!(
        expected == found,
        "gateway/src/store/schema.sql is not what the migrations make; it should read:\n{header}{file}"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut opened = schema_of(&store.lock());
    opened.sort();
    assert_eq!(opened, expected);
    let version: i64 = store
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Made without waiting for the disk, then written as every store is.
    let synchronous: i64 = store
        .lock()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(synchronous, 1, "NORMAL");
    drop(store);
    let reopened = Store::open(dir.path()).unwrap();
    let synchronous: i64 = reopened
        .lock()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(synchronous, 1, "NORMAL");
}

/// Message `id` of chat 7: in a store that numbers rows from 1 as they arrive, its row id
/// too when the messages are stored in order.
fn pending(id: i64, text: &str) -> Pending {
    Pending {
        id,
        message_id: id,
        chat_id: 7,
        thread: None,
        user_id: 7,
        text: text.into(),
        kind: Kind::Message,
        counted: false,
        media: None,
        media_group: None,
        replied: None,
    }
}

/// Stores `batch` as the poller does (each new message gets its row id from the store)
/// and returns what was new.
fn accept(store: &Store, batch: &[Pending]) -> Vec<Pending> {
    let mut batch: Vec<Pending> = batch
        .iter()
        .map(|m| Pending { id: 0, ..m.clone() })
        .collect();
    store.accept(&mut batch, &[]).unwrap();
    batch
}

fn piece(text: &str) -> OutPiece {
    OutPiece {
        html: format!("<b>{text}</b>"),
        plain: text.into(),
        edit_message_id: None,
        ..OutPiece::default()
    }
}

/// Commits `text` as the one-piece reply to `answers`, with `exchange`.
fn answer(store: &Store, answers: &[i64], text: &str, exchange: Option<&Exchange>) -> Vec<Stored> {
    store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers,
            text,
            pieces: &[piece(text)],
            exchange,
            question: None,
        })
        .unwrap()
}

/// Piece `id` was delivered, and the store records it now.
fn deliver(store: &Store, id: i64) {
    store.piece_left(id);
    store.record_left().unwrap();
}

/// Answers `id` and delivers the answer at once.
fn finish(store: &Store, id: i64, exchange: Option<&Exchange>) {
    for p in answer(store, &[id], "answer", exchange) {
        deliver(store, p.id);
    }
}

fn is_command(text: &str) -> bool {
    text.starts_with('/')
}

#[test]
fn the_inbox_survives_a_reopen_and_answers_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        accept(&store, &[pending(1, "a"), pending(2, "b")]),
        [pending(1, "a"), pending(2, "b")]
    );
    // Delivered again (its acknowledgement was lost): stored once, answered once.
    assert_eq!(accept(&store, &[pending(2, "b")]), []);
    finish(&store, 1, None);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unanswered().unwrap(), vec![pending(2, "b")]);
}

#[test]
fn a_reply_is_done_only_when_its_last_piece_left_and_survives_a_reopen_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    accept(&store, &[pending(1, "a"), pending(2, "b"), pending(3, "c")]);
    let stored = store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers: &[1, 2],
            text: "one two",
            pieces: &[piece("one"), piece("two")],
            exchange: None,
            question: Some("a\nb"),
        })
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].reply, stored[0].id);
    assert_eq!(stored[1].reply, stored[0].id);
    // Answered: no turn takes them again, and they are not unanswered.
    assert_eq!(store.unanswered().unwrap(), vec![pending(3, "c")]);
    // Closing the store records a piece that left.
    store.piece_left(stored[0].id);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let left = store.outbox().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].piece, piece("two"));
    assert_eq!(left[0].reply, stored[0].id);
    let done = |id: i64| store.is_done(id).unwrap();
    assert!(!done(1) && !done(2));
    deliver(&store, left[0].id);
    assert!(done(1) && done(2) && !done(3));
    // The next start writes it down.
    assert!(store.outbox().unwrap().is_empty());
    let written: i64 = store
        .lock()
        .query_row(
            "SELECT count(*) FROM inbox WHERE done_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(written, 2);
    assert!(store.outbox().unwrap().is_empty());
    assert_eq!(store.last_question(7).unwrap().as_deref(), Some("a\nb"));
}

#[test]
fn a_piece_that_left_is_removed_by_the_next_write_whatever_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    accept(&store, &[pending(1, "a")]);
    let stored = answer(&store, &[1], "answer", None);
    store.piece_left(stored[0].id);
    assert!(!store.is_done(1).unwrap(), "not written yet");
    // The next message's commit takes it along.
    accept(&store, &[pending(2, "b")]);
    assert!(store.is_done(1).unwrap());
    assert!(store.outbox().unwrap().is_empty());
    // With nothing else to write, recording commits it alone.
    let stored = answer(&store, &[2], "answer", None);
    store.piece_left(stored[0].id);
    store.record_left().unwrap();
    assert!(store.is_done(2).unwrap());
}

#[test]
fn a_reply_without_pieces_is_done_at_once_and_a_notice_answers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    accept(&store, &[pending(1, "a")]);
    store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers: &[],
            text: "restarting",
            pieces: &[piece("restarting")],
            exchange: None,
            question: None,
        })
        .unwrap();
    assert_eq!(store.unanswered().unwrap(), vec![pending(1, "a")]);
    store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers: &[1],
            text: "",
            pieces: &[],
            exchange: None,
            question: None,
        })
        .unwrap();
    assert!(store.unanswered().unwrap().is_empty());
    assert_eq!(store.outbox().unwrap().len(), 1);
}

#[test]
fn a_turn_takes_every_waiting_message_up_to_a_command_and_counts_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let stop = Pending {
        kind: Kind::Stop,
        ..pending(3, "/stop")
    };
    accept(
        &store,
        &[
            pending(1, "a"),
            pending(2, "b"),
            stop,
            pending(4, "/new"),
            pending(5, "c"),
        ],
    );
    let texts = |taken: &[Taken]| -> Vec<String> { taken.iter().map(|t| t.text.clone()).collect() };
    let first = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(texts(&first), ["a", "b"], "a /stop is never part of a turn");
    assert!(first.iter().all(|t| t.earlier_attempts == 0));
    // Not answered (the job died): the next turn takes them again, counted.
    let again = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(texts(&again), ["a", "b"]);
    assert!(again.iter().all(|t| t.earlier_attempts == 1));
    finish(&store, 1, None);
    finish(&store, 2, None);
    assert_eq!(
        texts(&store.take_turn(7, is_command, |_| false).unwrap()),
        ["/new"]
    );
    finish(&store, 4, None);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let last = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(texts(&last), ["c"]);
    assert_eq!(store.take_turn(8, is_command, |_| false).unwrap(), []);
    assert_eq!(store.waiting(7, 4).unwrap(), Vec::<i64>::new());
    assert_eq!(store.waiting(7, 5).unwrap(), [5]);
    let counted: i64 = store
        .lock()
        .query_row("SELECT attempts FROM inbox WHERE id = 5", [], |r| r.get(0))
        .unwrap();
    assert_eq!(counted, 1, "the count survives a reopen");
}

#[test]
fn a_start_counted_as_the_message_was_stored_is_not_counted_again_by_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let counted = Pending {
        counted: true,
        ..pending(1, "a")
    };
    accept(&store, &[counted, pending(2, "b")]);
    let attempts = |store: &Store| -> Vec<i64> {
        let conn = store.lock();
        let mut st = conn
            .prepare("SELECT attempts FROM inbox ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(attempts(&store), [1, 0], "counted as it was stored");
    let turn = store.take_turn(7, is_command, |id| id == 1).unwrap();
    assert!(turn.iter().all(|t| t.earlier_attempts == 0));
    assert_eq!(attempts(&store), [1, 1], "one start each, not two");
    drop(store);
    // The gateway died with the job: the next run counts the next start.
    let store = Store::open(dir.path()).unwrap();
    let turn = store.take_turn(7, is_command, |_| false).unwrap();
    assert!(turn.iter().all(|t| t.earlier_attempts == 1));
    assert_eq!(attempts(&store), [2, 2]);
}

#[test]
fn a_strangers_row_is_never_part_of_a_turn_and_unparsed_updates_are_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let stranger = Pending {
        kind: Kind::Stranger,
        user_id: 99,
        ..pending(1, "")
    };
    let raw = r#"{"update_id":2,"message":{"date":"soon"}}"#;
    store
        .accept(
            &mut vec![stranger],
            &[Unparsed {
                update_id: 2,
                raw: raw.into(),
            }],
        )
        .unwrap();
    assert_eq!(store.unanswered().unwrap()[0].kind, Kind::Stranger);
    assert!(
        store
            .take_turn(7, is_command, |_| false)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.unparsed().unwrap()[0].raw, raw);
}

#[test]
fn a_migrated_group_takes_its_conversation_settings_and_outbox_along() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let exchange = Exchange {
        chat_id: 7,
        thread: None,
        question: "q".into(),
        transcript: vec![ChatMessage::new(Role::Assistant, "a")],
        provider: "p".into(),
        model: "m".into(),
    };
    accept(&store, &[pending(1, "q"), pending(2, "next")]);
    store.set_chat_provider(7, Some("backup")).unwrap();
    answer(&store, &[1], "a", Some(&exchange));
    store.migrate_chat(7, -1007).unwrap();
    assert!(store.history(7, 10).unwrap().is_empty());
    assert_eq!(store.history(-1007, 10).unwrap().len(), 2);
    assert_eq!(
        store.chat_provider(-1007).unwrap().as_deref(),
        Some("backup")
    );
    assert_eq!(store.outbox().unwrap()[0].chat_id, -1007);
    assert_eq!(store.waiting(-1007, 10).unwrap(), [2]);
}

#[test]
fn history_is_per_conversation_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5 {
        let exchange = Exchange {
            chat_id: 7,
            thread: None,
            question: format!("q{i}"),
            transcript: vec![ChatMessage::new(Role::Assistant, format!("a{i}"))],
            provider: "p".into(),
            model: "m".into(),
        };
        finish(&store, i, Some(&exchange));
    }
    let h = store.history(7, 4).unwrap();
    let texts: Vec<&str> = h.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["q3", "a3", "q4", "a4"]);
    assert_eq!(h[0].role, Role::User);
    store.new_conversation(7).unwrap();
    assert!(store.history(7, 4).unwrap().is_empty());
    assert!(store.history(8, 4).unwrap().is_empty());
}

#[test]
fn tool_turns_round_trip_and_history_never_starts_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let call = ToolCall {
        id: "call-1".into(),
        name: "time__now".into(),
        arguments: "{}".into(),
    };
    let mut asking = ChatMessage::new(Role::Assistant, "");
    asking.tool_calls = vec![call.clone()];
    let transcript = vec![
        asking.clone(),
        ChatMessage::tool_result("call-1", "12:00"),
        ChatMessage::new(Role::Assistant, "It is noon."),
    ];
    let exchange = Exchange {
        chat_id: 7,
        thread: None,
        question: "what time is it?".into(),
        transcript: transcript.clone(),
        provider: "p".into(),
        model: "m".into(),
    };
    finish(&store, 1, Some(&exchange));
    let all = store.history(7, 10).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], ChatMessage::new(Role::User, "what time is it?"));
    assert_eq!(all[1..], transcript[..]);
    // The last 3 turns start with a tool call: they are cut back to no history at all
    // rather than sent without the question that started them.
    assert!(store.history(7, 3).unwrap().is_empty());
}

#[test]
fn a_chat_keeps_its_provider_choice_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.chat_provider(7).unwrap(), None);
    store.set_chat_provider(7, Some("backup")).unwrap();
    store.new_conversation(7).unwrap();
    assert_eq!(store.chat_provider(7).unwrap().as_deref(), Some("backup"));
    store.set_chat_provider(7, None).unwrap();
    assert_eq!(store.chat_provider(7).unwrap(), None);
}

#[test]
fn a_version_1_store_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(MIGRATIONS[0]).unwrap();
    conn.execute_batch(
        "PRAGMA user_version = 1;
         INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 1, 'user', 'old', 0);
         INSERT INTO inbox (update_id, chat_id, user_id, text, received_at) VALUES (3, 7, 7, 'pending', 0);",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.history(7, 10).unwrap()[0].content, "old");
    assert_eq!(store.unanswered().unwrap()[0].text, "pending");
    store.set_chat_provider(7, Some("p")).unwrap();
}

/// A store written by the version before the outbox (schema 2), with a message answered,
/// one waiting, a conversation and a chat's model choice: all of it reads the same after
/// the migration, and the waiting message is the chat's next turn.
#[test]
fn a_version_2_store_with_data_gains_the_outbox_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(MIGRATIONS[0]).unwrap();
    conn.execute_batch(MIGRATIONS[1]).unwrap();
    conn.execute_batch(
        "PRAGMA user_version = 2;
         INSERT INTO telegram_offset (id, next_update_id) VALUES (1, 12);
         INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 1, 'user', 'hi', 0);
         INSERT INTO turns (chat_id, conversation, role, content, at, provider, model) VALUES (7, 1, 'assistant', 'hello', 0, 'p', 'm');
         INSERT INTO chats (chat_id, conversation, provider) VALUES (7, 1, 'backup');
         INSERT INTO inbox (update_id, chat_id, user_id, text, received_at, done_at, reply) VALUES (10, 7, 7, 'hi', 0, 1, 'hello');
         INSERT INTO inbox (update_id, chat_id, user_id, text, received_at) VALUES (11, 7, 7, 'still waiting', 0);",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    let version: i64 = store
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let history: Vec<String> = store
        .history(7, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(history, ["hi", "hello"]);
    assert_eq!(store.chat_provider(7).unwrap().as_deref(), Some("backup"));
    assert_eq!(
        store.unanswered().unwrap(),
        vec![Pending {
            message_id: 0,
            ..pending(11, "still waiting")
        }]
    );
    assert!(store.outbox().unwrap().is_empty());
    let turn = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(turn.len(), 1);
    assert_eq!(turn[0].text, "still waiting");
    assert_eq!(turn[0].earlier_attempts, 0);
    assert_eq!(store.last_question(7).unwrap(), None);
}

/// A store of schema 3 (the outbox's) with a message waiting: after the migration it
/// reads the same, and a voice note stored now keeps what is needed to fetch it again
/// after a restart (not its bytes), and is never taken for a command by its caption.
#[test]
fn a_version_3_store_gains_media_references_and_keeps_its_waiting_message() {
    use crate::media::{MediaRef, RefKind};
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    for m in &MIGRATIONS[..3] {
        conn.execute_batch(m).unwrap();
    }
    conn.execute_batch(
        "PRAGMA user_version = 3;
         INSERT INTO inbox (update_id, chat_id, user_id, text, received_at) VALUES (11, 7, 7, 'still waiting', 0);",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.unanswered().unwrap(),
        vec![Pending {
            message_id: 0,
            ..pending(11, "still waiting")
        }]
    );
    let voice = MediaRef {
        kind: RefKind::Voice,
        file_id: "AwACAgIAAxkBAAI".into(),
        size: Some(12_345),
        mime_type: Some("audio/ogg".into()),
        file_name: None,
        duration_secs: Some(7),
    };
    let with_voice = Pending {
        media: Some(voice.clone()),
        ..pending(12, "/new")
    };
    accept(&store, std::slice::from_ref(&with_voice));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unanswered().unwrap()[1], with_voice);
    let turn = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(
        turn.len(),
        2,
        "a caption that looks like a command is not one"
    );
    assert_eq!(turn[1].media.as_ref(), Some(&voice));
}

#[test]
fn an_album_member_and_a_reply_keep_what_they_belong_to_across_a_reopen() {
    use crate::replied::{Author, Replied};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let member = Pending {
        media_group: Some("13579".into()),
        ..pending(1, "")
    };
    let replied = Replied {
        author: Author::Other { name: "Ann".into() },
        text: "the part quoted".into(),
        selected: true,
        cut: false,
        media: None,
    };
    let reply = Pending {
        replied: Some(replied.clone()),
        ..pending(2, "what does it mean?")
    };
    accept(&store, &[member.clone(), reply]);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let waiting = store.unanswered().unwrap();
    assert_eq!(waiting[0].media_group.as_deref(), Some("13579"));
    let turn = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(turn.len(), 2);
    assert_eq!(turn[1].replied, Some(replied));
}

#[test]
fn retry_finds_the_question_the_last_job_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_question(7).unwrap(), None);
    accept(&store, &[pending(1, "hello"), pending(2, "/retry")]);
    store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers: &[1],
            text: "quota",
            pieces: &[piece("quota")],
            exchange: None,
            question: Some("hello"),
        })
        .unwrap();
    assert_eq!(store.last_question(7).unwrap().as_deref(), Some("hello"));
}

#[test]
fn statements_are_not_prepared_again_for_new_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conn = store.lock();
    for limit in [20, 5, 20] {
        let mut st = conn
            .prepare_cached("SELECT id FROM turns WHERE chat_id = ?1 ORDER BY id DESC LIMIT ?2")
            .unwrap();
        st.query_map(params![7, limit], |r| r.get::<_, i64>(0))
            .unwrap()
            .for_each(drop);
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}

#[test]
fn checkpoints_happen_off_the_writer_and_empty_the_log_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let automatic: i64 = store
        .lock()
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(automatic, 0, "commits must not checkpoint");
    for i in 0..200 {
        accept(&store, &[pending(i, "x")]);
    }
    let wal = dir.path().join("state.db-wal");
    drop(store);
    let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "the last checkpoint truncates the log");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unanswered().unwrap().len(), 200);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::TooNew { .. })
    ));
}

#[test]
fn a_corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.db"),
        b"this is not a database, not even close........",
    )
    .unwrap();
    // The log may hold the newest commits: it goes with the copy, under the name SQLite
    // looks for beside it.
    std::fs::write(dir.path().join("state.db-wal"), b"the last commits").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.unanswered().unwrap().is_empty());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let copy = names
        .iter()
        .find(|n| n.starts_with("state.db.corrupt-") && !n.ends_with("-wal"))
        .unwrap_or_else(|| panic!("no copy in {names:?}"));
    let wal = dir.path().join(format!("{copy}-wal"));
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        b"the last commits",
        "{names:?}"
    );
}

/// Each checkpoint runs on its own connection while the gateway goes on committing, so it
/// never catches the last commit by itself; the log must start over anyway, or it grows
/// with every message and each commit costs more (see `checkpoint`).
#[test]
fn the_log_starts_over_while_commits_go_on_during_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let checkpointer = store.checkpointer.as_ref().unwrap();
    let wal = dir.path().join("state.db-wal");
    let mut largest = 0;
    for i in 1..=3000 {
        let passes = checkpointer.passes_started();
        accept(&store, &[pending(i, "hi")]);
        let stored = answer(&store, &[i], "an answer", None);
        store.piece_left(stored[0].id);
        // Two counted commits a message: a pass was asked for. Let it begin, then go on
        // writing while it runs, as the gateway does.
        if i % 32 == 0 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while checkpointer.passes_started() == passes {
                assert!(std::time::Instant::now() < deadline, "no checkpoint began");
                std::thread::yield_now();
            }
        }
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    // 1,024 frames of 4 KiB, and what is written while two checkpoints run; 3,000
    // messages written to a log that never starts over take about 90 MiB.
    assert!(largest < 16 << 20, "the log grew to {largest} bytes");
}

/// A year of use leaves a store the size of its recent weeks: answered inbox rows, old
/// unparsed updates, ended conversations and history past what a job may be sent are
/// forgotten; what is waiting, recent or still sent to the model stays.
#[test]
fn pruning_forgets_what_is_no_longer_needed_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = 1_000_000_000;
    let long_ago = now - 40 * 24 * 60 * 60;
    {
        let conn = store.lock();
        conn.execute_batch(&format!(
            "INSERT INTO inbox (id, chat_id, user_id, text, received_at, done_at, message_id) VALUES (1, 7, 7, 'old, done', {long_ago}, {long_ago}, 1);
             INSERT INTO inbox (id, chat_id, user_id, text, received_at, message_id) VALUES (2, 7, 7, 'old, waiting', {long_ago}, 2);
             INSERT INTO inbox (id, chat_id, user_id, text, received_at, done_at, message_id) VALUES (3, 7, 7, 'new, done', {now}, {now}, 3);
             INSERT INTO unparsed_updates (update_id, raw, received_at) VALUES (1, 'old', {long_ago});
             INSERT INTO unparsed_updates (update_id, raw, received_at) VALUES (2, 'new', {now});
             INSERT INTO chats (chat_id, conversation) VALUES (7, 2);
             INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 1, 'user', 'ended long ago', {long_ago});
             INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 1, 'user', 'ended lately', {now});"
        ))
        .unwrap();
        for i in 0..1_200 {
            conn.execute(
                "INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 2, 'user', ?1, ?2)",
                params![format!("turn {i}"), long_ago],
            )
            .unwrap();
        }
    }
    let pruned = store.prune_at(now).unwrap();
    assert_eq!(
        pruned,
        prune::Pruned {
            inbox: 1,
            unparsed: 1,
            turns: 1 + 200
        }
    );
    let conn = store.lock();
    let texts = |sql: &str| -> Vec<String> {
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        texts("SELECT text FROM inbox ORDER BY id"),
        ["old, waiting", "new, done"]
    );
    assert_eq!(texts("SELECT raw FROM unparsed_updates"), ["new"]);
    let current = texts("SELECT content FROM turns WHERE conversation = 2 ORDER BY id");
    assert_eq!(current.len(), 1_000);
    assert_eq!(current[0], "turn 200");
    assert_eq!(
        texts("SELECT content FROM turns WHERE conversation = 1"),
        ["ended lately"]
    );
    drop(conn);
    assert_eq!(store.prune_at(now).unwrap(), prune::Pruned::default());
}

/// A rich reply is its rich piece and then its HTML form, kept as such across a reopen;
/// once the rich piece and its HTML form left together, the message is done.
#[test]
fn a_rich_reply_keeps_its_html_form_behind_it_until_both_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    accept(&store, &[pending(1, "a")]);
    let rich = OutPiece {
        rich: Some("| a |\n|---|\n| 1 |".into()),
        edit_message_id: Some(40),
        ..OutPiece::default()
    };
    let html = OutPiece {
        fallback: true,
        edit_message_id: Some(40),
        ..piece("a 1")
    };
    store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: None,
            answers: &[1],
            text: "| a |",
            pieces: &[rich.clone(), html.clone()],
            exchange: None,
            question: None,
        })
        .unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let left = store.outbox().unwrap();
    let pieces: Vec<&OutPiece> = left.iter().map(|s| &s.piece).collect();
    assert_eq!(pieces, [&rich, &html]);
    assert!(!store.is_done(1).unwrap());
    store.piece_left(left[0].id);
    store.piece_left(left[1].id);
    store.record_left().unwrap();
    assert!(store.is_done(1).unwrap());
}

/// A store of schema 11 (before topics) with a conversation, a `/model` choice, a last
/// question, a waiting message and a reply in the outbox: after the migration all of it
/// is the chat's General topic's (no thread), and a topic of the same chat is a
/// conversation of its own (history, `/new`, `/model`, `/retry`, turns, outbox).
#[test]
fn a_store_from_before_topics_keeps_its_conversations_as_general_and_topics_are_their_own() {
    use crate::topics::Place;
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    for m in &MIGRATIONS[..11] {
        conn.execute_batch(m).unwrap();
    }
    conn.execute_batch(
        "PRAGMA user_version = 11;
         INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 2, 'user', 'hi', 0);
         INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 2, 'assistant', 'hello', 0);
         INSERT INTO chats (chat_id, conversation, provider, last_question) VALUES (7, 2, 'backup', 'hi');
         INSERT INTO inbox (id, message_id, chat_id, user_id, text, received_at) VALUES (11, 11, 7, 7, 'still waiting', 0);
         INSERT INTO outbox (chat_id, html, plain, created_at) VALUES (7, 'left', 'left', 0);",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    let topic = Place::new(7, Some(40));
    let contents = |place: Place| -> Vec<String> {
        store
            .history(place, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect()
    };
    assert_eq!(contents(Place::from(7)), ["hi", "hello"]);
    assert!(contents(topic).is_empty());
    assert_eq!(store.chat_provider(7).unwrap().as_deref(), Some("backup"));
    assert_eq!(store.chat_provider(topic).unwrap(), None);
    assert_eq!(store.last_question(7).unwrap().as_deref(), Some("hi"));
    assert_eq!(store.last_question(topic).unwrap(), None);
    assert_eq!(store.unanswered().unwrap()[0].thread, None);
    assert_eq!(store.outbox().unwrap()[0].thread, None);

    // A message in the topic is the topic's turn, never General's, and the reverse.
    let in_topic = Pending {
        thread: Some(40),
        ..pending(12, "in the topic")
    };
    let stored = accept(&store, &[in_topic]);
    assert_eq!(store.unanswered().unwrap()[1].place(), topic);
    let taken = store.take_turn(topic, is_command, |_| false).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].text, "in the topic");
    let general = store.take_turn(7, is_command, |_| false).unwrap();
    assert_eq!(general.len(), 1);
    assert_eq!(general[0].text, "still waiting");

    // Its answer goes to the topic and joins the topic's history alone.
    let exchange = Exchange {
        chat_id: 7,
        thread: Some(40),
        question: "in the topic".into(),
        transcript: vec![ChatMessage::new(Role::Assistant, "topic answer")],
        provider: "p".into(),
        model: "m".into(),
    };
    let pieces = store
        .commit_reply(&ReplyRecord {
            chat_id: 7,
            thread: Some(40),
            answers: &[stored[0].id],
            text: "topic answer",
            pieces: &[piece("topic answer")],
            exchange: Some(&exchange),
            question: Some("in the topic"),
        })
        .unwrap();
    assert_eq!(pieces[0].thread, Some(40));
    assert_eq!(contents(topic), ["in the topic", "topic answer"]);
    assert_eq!(contents(Place::from(7)), ["hi", "hello"]);
    assert_eq!(
        store.last_question(topic).unwrap().as_deref(),
        Some("in the topic")
    );
    assert_eq!(store.last_question(7).unwrap().as_deref(), Some("hi"));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let threads: Vec<Option<i32>> = store.outbox().unwrap().iter().map(|p| p.thread).collect();
    assert_eq!(
        threads,
        [None, Some(40)],
        "each piece still knows its topic"
    );

    // `/new` and `/model` in the topic leave General as it was.
    store.new_conversation(topic).unwrap();
    store.set_chat_provider(topic, Some("other")).unwrap();
    assert!(store.history(topic, 10).unwrap().is_empty());
    assert_eq!(store.history(7, 10).unwrap().len(), 2);
    assert_eq!(store.chat_provider(7).unwrap().as_deref(), Some("backup"));
    assert_eq!(
        store.chat_provider(topic).unwrap().as_deref(),
        Some("other")
    );
}
