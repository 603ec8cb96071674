//! Real clients pull through the cistern binary this build produced: dockerd, containerd (`ctr`),
//! skopeo and curl against a local Docker Hub stand-in (Distribution with token auth). The suite
//! itself is Python (tests/e2e, run by pytest) because the stand-in and the daemons are driven
//! from there; this test is what makes `cargo test --release` run it.
//!
//! It needs root and the packages `tests/e2e/install.sh` installs. On a machine without them it
//! fails and says why; it never passes by skipping. Setting `CISTERN_SKIP_REAL_CLIENTS=reason`
//! skips it explicitly and loudly, outside CI only.

use std::process::Command;

#[test]
fn dockerd_containerd_skopeo_and_curl_pull_through_cistern() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Ok(reason) = std::env::var("CISTERN_SKIP_REAL_CLIENTS") {
        assert!(
            !in_ci,
            "CISTERN_SKIP_REAL_CLIENTS is set in CI ({reason}); CI must run the real clients"
        );
        eprintln!("\n!!! REAL-CLIENT TESTS SKIPPED: CISTERN_SKIP_REAL_CLIENTS={reason}\n");
        return;
    }
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("python3")
        .args(["-m", "pytest", "tests/e2e", "-v", "--durations=5"])
        .current_dir(manifest_dir)
        .env("CISTERN_BIN", env!("CARGO_BIN_EXE_cistern"))
        .status()
        .expect("python3 runs (install it, then tests/e2e/install.sh)");
    assert!(
        status.success(),
        "the real-client suite failed ({status}); its output is above. \
         Run it alone with: CISTERN_BIN=target/release/cistern python3 -m pytest tests/e2e"
    );
}
