//! The README's main job: `rollwatch demo` watches its simulated deployment and decides
//! `rollback` once the error rate crosses 5% — through real sockets, pollers and the engine.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_in_a_rollback_within_a_minute() {
    let mut out = Vec::new();
    let rolled_back = rollwatch::demo::run(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(rolled_back, "{text}");
    assert!(text.contains("rule error-rate-elevated inactive → pending"), "{text}");
    assert!(text.contains("rule error-rate-critical inactive → firing"), "{text}");
    assert!(text.contains("Is error rate > 5%? YES → rollback"), "{text}");
}
