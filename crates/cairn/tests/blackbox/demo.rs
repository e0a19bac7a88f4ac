//! `cairn demo` runs its MSC4081 story to the end and says so.

#[tokio::test]
async fn the_demo_shows_a_claim_from_the_cache_and_a_decrypted_message() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("demo")
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        transcript.contains("answered from a.demo's cache (reason: connect)"),
        "{transcript}"
    );
    assert!(
        transcript.contains(
            "bob decrypted from @alice:a.demo: \"hello bob, sent while b.demo was down\""
        ),
        "{transcript}"
    );
}
