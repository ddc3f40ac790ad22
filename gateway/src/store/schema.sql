-- The store's schema as its migrations leave it (schema 12), made in one step on a new
-- store. Written from the migrations; store::tests checks the two agree, and prints this
-- file anew when they do not.
CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        done_at INTEGER,
        reply TEXT
    , kind TEXT NOT NULL DEFAULT 'message', attempts INTEGER NOT NULL DEFAULT 0, answered_by INTEGER, media TEXT, message_id INTEGER, media_group TEXT, replied_to TEXT, thread_id INTEGER NOT NULL DEFAULT 0);
CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL,
        conversation INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        at INTEGER NOT NULL,
        provider TEXT,
        model TEXT
    , tool_calls TEXT, tool_call_id TEXT, thread_id INTEGER NOT NULL DEFAULT 0);
CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        reply INTEGER,
        chat_id INTEGER NOT NULL,
        html TEXT NOT NULL,
        plain TEXT NOT NULL,
        edit_message_id INTEGER,
        created_at INTEGER NOT NULL
    , file TEXT, rich TEXT, fallback INTEGER NOT NULL DEFAULT 0, thread_id INTEGER NOT NULL DEFAULT 0);
CREATE TABLE "unparsed_updates" (
        id INTEGER PRIMARY KEY,
        update_id INTEGER NOT NULL,
        raw TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
CREATE TABLE previews (
        chat_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL, thread_id INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chat_id, message_id)
    );
CREATE TABLE usage_daily (
        user_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        provider TEXT NOT NULL,
        day TEXT NOT NULL,
        calls INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        uncosted_calls INTEGER NOT NULL,
        PRIMARY KEY (user_id, day, chat_id, provider)
    );
CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL,
        thread_id INTEGER,
        user_id INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        cron TEXT,
        time_zone TEXT NOT NULL,
        next_at INTEGER,
        created_at INTEGER NOT NULL,
        cancelled_at INTEGER
    );
CREATE TABLE schedule_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        late INTEGER NOT NULL,
        inbox_row INTEGER,
        failure TEXT
    );
CREATE TABLE chat_time_zones (
        chat_id INTEGER PRIMARY KEY,
        time_zone TEXT NOT NULL
    );
CREATE TABLE "chats" (
        chat_id INTEGER NOT NULL,
        thread_id INTEGER NOT NULL DEFAULT 0,
        conversation INTEGER NOT NULL DEFAULT 1,
        provider TEXT,
        last_question TEXT,
        PRIMARY KEY (chat_id, thread_id)
    );
CREATE UNIQUE INDEX inbox_message ON inbox (chat_id, message_id)
        WHERE message_id IS NOT NULL;
CREATE INDEX usage_by_day ON usage_daily (day);
CREATE INDEX schedules_due ON schedules (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX schedules_by_chat ON schedules (chat_id, id);
CREATE INDEX schedule_runs_by_row ON schedule_runs (inbox_row);
CREATE INDEX inbox_waiting ON inbox (chat_id, thread_id, id)
        WHERE done_at IS NULL AND answered_by IS NULL;
CREATE INDEX turns_by_chat ON turns (chat_id, thread_id, conversation, id);
