//! The README's main job: `rollwatch demo` watches its simulated deployment, decides `rollback`
//! once the error rate crosses 5%, rolls back through the simulation's endpoint, verifies and
//! announces "ROLLBACK COMPLETE" — through real sockets, pollers, the engine and the dispatcher.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_rolls_back_verifies_and_completes() {
    let mut out = Vec::new();
    let rolled_back = rollwatch::demo::run(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(rolled_back, "{text}");
    assert!(text.contains("rule error-rate-elevated inactive → pending"), "{text}");
    assert!(text.contains("rule error-rate-critical inactive → firing"), "{text}");
    assert!(text.contains("Is error rate > 5%? YES → rollback"), "{text}");
    assert!(text.contains("ROLLBACK IN PROGRESS"), "{text}");
    assert!(text.contains("ROLLBACK COMPLETE"), "{text}");
    assert!(text.contains("Previous version restored: v1.2.3"), "{text}");
    assert!(text.contains("Duration: "), "{text}");
    // The steps ran against the simulation: its rollback endpoint answered, and the history says so.
    assert!(text.contains("history: rb-1 solvereign v1.2.4 → v1.2.3, completed"), "{text}");
    assert!(text.contains("step 1 run undo: ok, HTTP 200"), "{text}");
    let announce = text.find("ROLLBACK IN PROGRESS").unwrap();
    let complete = text.find("ROLLBACK COMPLETE").unwrap();
    assert!(announce < complete, "{text}");
}
