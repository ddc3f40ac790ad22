//! The store across reopens, migrations and damage.

use hermes_protocol::{ChatMessage, Role, ToolCall};
use rusqlite::{Connection, params};

use super::*;

fn pending(id: i64, text: &str) -> Pending {
    Pending {
        update_id: id,
        chat_id: 7,
        user_id: 7,
        text: text.into(),
    }
}

#[test]
fn the_inbox_survives_a_reopen_and_answers_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.next_update_id().unwrap(), 0);
    store
        .accept(&[pending(5, "a"), pending(6, "b")], 7)
        .unwrap();
    store.accept(&[pending(6, "b")], 7).unwrap();
    store.finish(5, "answer", None).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.next_update_id().unwrap(), 7);
    assert_eq!(store.pending().unwrap(), vec![pending(6, "b")]);
}

#[test]
fn history_is_per_conversation_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5 {
        let exchange = Exchange {
            chat_id: 7,
            question: format!("q{i}"),
            transcript: vec![ChatMessage::new(Role::Assistant, format!("a{i}"))],
            provider: "p".into(),
            model: "m".into(),
        };
        store.finish(i, "", Some(&exchange)).unwrap();
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
        question: "what time is it?".into(),
        transcript: transcript.clone(),
        provider: "p".into(),
        model: "m".into(),
    };
    store.finish(1, "It is noon.", Some(&exchange)).unwrap();
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
    assert_eq!(store.pending().unwrap()[0].text, "pending");
    store.set_chat_provider(7, Some("p")).unwrap();
}

#[test]
fn retry_finds_the_last_message_that_is_not_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_user_text(7).unwrap(), None);
    store
        .accept(&[pending(1, "hello"), pending(2, "/retry")], 3)
        .unwrap();
    assert_eq!(store.last_user_text(7).unwrap().as_deref(), Some("hello"));
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
        store.accept(&[pending(i, "x")], i + 1).unwrap();
    }
    let wal = dir.path().join("state.db-wal");
    drop(store);
    let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "the last checkpoint truncates the log");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.pending().unwrap().len(), 200);
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
    let store = Store::open(dir.path()).unwrap();
    assert!(store.pending().unwrap().is_empty());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.db.corrupt-")
        });
    assert!(aside);
}
