//! The multi-node deployment of docs/multi-node.md, whole: three gateway `airlockd`s that
//! keep the tenants' limits in one real `redis-server` and whose model is a remote pool of
//! two engine-role `airlockd` nodes (test engine), all over real mTLS sockets. Skipped, with
//! a notice, without redis-server/valkey-server unless `AIRLOCK_REQUIRE_REDIS_TEST=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cluster::{Redis, engine_node, gateway_with, upstream};
use common::{Daemon, Pki, TEST_MODEL};
use serde_json::{Value, json};

const TENANTS: &str = r#"
[[tenants]]
name = "budget"
models = ["*"]
cert_cn = ["alice"]
tokens_per_minute = 600

[[tenants]]
name = "load"
models = ["*"]
cert_cn = ["bob"]
"#;

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// One streamed answer as the client saw it.
#[derive(Debug)]
struct Seen {
    gateway: usize,
    sent: Instant,
    /// The status, `None` when the connection failed (the killed gateway).
    status: Option<u16>,
    request_id: String,
    /// The stream ended with `[DONE]` and no error event.
    complete: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_two_engine_nodes_one_budget_and_the_failure_matrix() {
    let Some(redis) = Redis::start() else { return };
    let pki = Pki::new(&["alice", "bob", "gateway"]);
    let mut engines = vec![engine_node(&pki, "20ms"), engine_node(&pki, "20ms")];
    let upstreams: Vec<String> = engines.iter().map(upstream).collect();
    let sections = format!(
        "{TENANTS}\n[cluster.limits]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n\
         lease_ttl = \"2s\"\n",
        redis.url()
    );
    let mut gateways: Vec<Daemon> = (0..3)
        .map(|_| gateway_with(&pki, &upstreams, "", &sections))
        .collect();

    // One budget: 200 concurrent requests of one tenant over the three gateways are served
    // at most its 600 tokens a minute (plus what refills during the run), counted from the
    // engine nodes' own usage.
    let started = Instant::now();
    let clients: Vec<_> = gateways
        .iter()
        .map(|g| (g.client(&pki, "alice"), g.url("/v1/chat/completions")))
        .collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, url) = clients[i % 3].clone();
            tokio::spawn(async move {
                let resp = client.post(url).json(&chat(8, false)).send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut ok, mut limited, mut served) = (0, 0, 0u64);
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                served += v["usage"]["total_tokens"].as_u64().unwrap();
            }
            429 => limited += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let refilled = (600.0 * started.elapsed().as_secs_f64() / 60.0).ceil() as u64;
    assert!(ok > 0 && limited > 0, "ok {ok}, limited {limited}");
    assert!(
        served <= 600 + refilled,
        "served {served} tokens > 600 + {refilled} refilled, over three gateways"
    );

    // The failure matrix: streams from two clients per gateway, one after another; then
    // kill -9 one gateway and one engine node.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (gateway, g) in gateways.iter().enumerate() {
        for _ in 0..2 {
            let client = g.client(&pki, "bob");
            let url = g.url("/v1/chat/completions");
            let stop = std::sync::Arc::clone(&stop);
            load.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(15),
                        client.post(&url).json(&chat(16, true)).send(),
                    )
                    .await
                    .expect("no response head within 15 s");
                    let Ok(resp) = answer else {
                        seen.push(Seen {
                            gateway,
                            sent,
                            status: None,
                            request_id: String::new(),
                            complete: false,
                        });
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let status = resp.status().as_u16();
                    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                    // Bounded: a stream on a dead engine must end, not hang.
                    let text = tokio::time::timeout(Duration::from_secs(15), resp.text())
                        .await
                        .expect("a stream hung")
                        .unwrap_or_default();
                    let complete = text.contains("data: [DONE]") && !text.contains("\"error\"");
                    seen.push(Seen {
                        gateway,
                        sent,
                        status: Some(status),
                        request_id,
                        complete,
                    });
                }
                seen
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    gateways[0].kill_9();
    engines[0].kill_9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen: Vec<Seen> = Vec::new();
    for task in load {
        seen.extend(task.await.unwrap());
    }

    let ended_badly = seen.iter().filter(|s| !s.complete).count();
    eprintln!(
        "failure matrix: {} streams, {} complete, {ended_badly} failed or cut off by the kills",
        seen.len(),
        seen.len() - ended_badly
    );
    // The live gateways kept serving: everything they were sent after the kill (a moment
    // for the dead engine's connections to fail over) completed.
    for gateway in [1, 2] {
        let after: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.gateway == gateway && s.sent > killed_at + Duration::from_millis(200))
            .collect();
        assert!(
            after.len() >= 2,
            "gateway {gateway}: {} after the kill",
            after.len()
        );
        for s in after {
            assert!(
                s.status == Some(200) && s.complete,
                "gateway {gateway} failed a request sent after the kill: {s:?}"
            );
        }
    }
    // Before the kill everything completed; around it, only streams that were on the dead
    // nodes may have ended with an error (they did end: none hung).
    for s in seen.iter().filter(|s| s.sent < killed_at) {
        if !s.complete {
            assert!(
                s.status.is_none_or(|code| code == 200),
                "a request refused around the kill: {s:?}"
            );
        }
    }
    assert!(
        seen.iter().any(|s| s.gateway == 0 && s.complete),
        "the killed gateway served nothing before it died"
    );

    // Every complete answer has its completion record (200) on the gateway that answered.
    for (gateway, g) in gateways.iter().enumerate() {
        let completed: HashSet<String> = common::audit_records(&g.audit_db())
            .into_iter()
            .filter(|r| r["kind"] == "complete" && r["status"] == 200)
            .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
            .collect();
        for s in seen.iter().filter(|s| s.gateway == gateway && s.complete) {
            assert!(
                completed.contains(&s.request_id),
                "gateway {gateway}: an answer without its completion record ({})",
                s.request_id
            );
        }
    }
    // Every node's chain verifies: the live ones after a clean stop, the killed ones from
    // what reached their disks.
    for mut node in gateways.drain(1..).chain(engines.drain(1..)) {
        node.stop();
        let (code, out) = node.verify_audit(&pki);
        assert_eq!(code, 0, "{out}");
    }
    for node in gateways.iter().chain(&engines) {
        let (code, out) = node.verify_audit(&pki);
        assert_eq!(code, 0, "a killed node's log: {out}");
    }
}
