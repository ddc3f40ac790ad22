//! Skipping a test that cannot run on this machine, loudly, and never on CI.
//!
//! Some tests need what a developer's machine may lack: a VM, Python with a package from
//! PyPI, `systemd-analyze`, a kernel feature. There the test is skipped with its reason
//! written to the terminal (libtest hides what a passing test prints). Under CI
//! (`HERMES_CI=1`, which `.ci/run` sets after installing what the tests need; its machine
//! has root and the package registries) a missing capability fails the test instead: a
//! guarantee must never be reported `ok` there without having been checked.

use std::io::Write;

/// The variable `.ci/run` sets.
pub const CI_VAR: &str = "HERMES_CI";

/// Whether this is CI's run, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var(CI_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Skips the calling test because of `reason` (the caller returns right after): the
/// reason goes to the terminal, or, under CI, the test fails with it.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    match verdict(&test, reason, under_ci()) {
        // Straight to stderr: libtest captures `print!` and `eprint!` of passing tests,
        // which would make the skip silent.
        Ok(line) => {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// What skipping `test` means: the line to print, or, under CI, the failure.
fn verdict(test: &str, reason: &str, ci: bool) -> Result<String, String> {
    if ci {
        Err(format!(
            "{test} cannot run here, and under CI ({CI_VAR}) nothing may be skipped: {reason}"
        ))
    } else {
        Ok(format!("SKIPPED {test}: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_a_failure_under_ci_and_a_printed_line_elsewhere() {
        assert_eq!(
            verdict("t", "no VM", false),
            Ok("SKIPPED t: no VM".to_string())
        );
        let failure = verdict("t", "no VM", true).expect_err("under CI a skip fails");
        assert!(
            failure.contains("no VM") && failure.contains(CI_VAR),
            "{failure}"
        );
    }
}
