//! `cargo run -p hermes-tests --bin demo`: what hermes-gateway does, in ten seconds, with
//! no bot token and no API key. (The debug profile, as the tests: the README's test command
//! then reuses the demo's build.)
//!
//! Starts the fake Telegram Bot API server and the fake provider on 127.0.0.1, then the real
//! `hermes-gateway` (which starts real `hermes-worker`s), and plays a short conversation:
//! an answer; the provider's HTTP 402 from the incident this project exists to prevent; the
//! worker killed mid-job; an answer again. Each turn shows the gateway's PID: it never
//! changes.

use std::process::ExitCode;
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{ProviderReply, SEED_402_BODY};
use hermes_tests::harness::{PATIENCE, Rig, USER};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    println!(
        "hermes-gateway demo: fake Telegram and fake provider on 127.0.0.1, the real binaries\n"
    );
    let mut rig = Rig::start(WorkerMode::Pool, |o| {
        o.pool_size = 1;
        o.job_timeout_secs = 30;
        // Off, so the demo's next turn reaches the provider again at once; with the
        // default (600 s) the gateway would answer from memory and spare the account.
        o.quota_cooldown_secs = Some(0);
    })
    .await;
    let pid = rig.pid;
    println!("gateway started: pid {pid}, pool mode, 1 worker\n");

    rig.provider.push(ProviderReply::Text(
        "Rust is a systems programming language focused on safety and speed.".into(),
    ));
    turn(&rig, "What is Rust?").await?;

    narrate("the provider answers HTTP 402: daily quota exhausted (the seed incident)");
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    turn(&rig, "And what is Go?").await?;

    let worker = rig
        .gateway
        .workers()
        .first()
        .map(|w| w.pid)
        .ok_or("no worker process found")?;
    narrate(&format!(
        "the provider stalls, and the worker (pid {worker}) is killed with SIGKILL mid-job"
    ));
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "Tell me about Haskell");
    show_user(pid, "Tell me about Haskell");
    if !rig.provider.wait_for_requests(3, PATIENCE).await {
        return Err("the worker never called the provider".into());
    }
    kill(Pid::from_raw(worker), Signal::SIGKILL).map_err(|e| format!("kill: {e}"))?;
    let replies = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let reply = replies
        .get(2)
        .ok_or("no reply after the worker was killed")?;
    show_bot(pid, &reply.text);

    narrate("a fresh worker has taken over");
    rig.provider.push(ProviderReply::Text(
        "Haskell is a purely functional language with lazy evaluation.".into(),
    ));
    turn(&rig, "Tell me about Haskell, please").await?;

    rig.gateway.assert_running(pid);
    println!(
        "\nthe same gateway process (pid {pid}) answered every turn; stopping it with SIGTERM"
    );
    rig.gateway.signal(Signal::SIGTERM);
    match rig.gateway.wait_exit(Duration::from_secs(10)).await {
        Some(status) => println!("gateway exited: {status}"),
        None => return Err("the gateway did not exit within 10 s of SIGTERM".into()),
    }
    Ok(())
}

async fn turn(rig: &Rig, text: &str) -> Result<(), String> {
    show_user(rig.pid, text);
    let reply = rig.ask(text).await;
    show_bot(rig.pid, &reply.text);
    Ok(())
}

fn show_user(pid: i32, text: &str) {
    println!("[gateway pid {pid}] you:    {text}");
}

fn show_bot(pid: i32, text: &str) {
    println!("[gateway pid {pid}] hermes: {text}");
}

fn narrate(what: &str) {
    println!("        -- {what}");
}
