//! Records the git commit this binary is built from, for `--version` and the
//! `amqp_bridge_build_info` metric: `GIT_COMMIT` when set (container builds
//! have no .git), else `git rev-parse`, else "unknown".
//!
//! It reruns when HEAD or a branch moves, watching the files git names
//! (`git rev-parse --git-path`): in a `git worktree` `.git` is a file, and
//! a watched path that does not exist makes cargo rerun the script — and
//! rebuild the whole crate — on every build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    for path in ["HEAD", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=AMQP_BRIDGE_COMMIT={commit}");
}
