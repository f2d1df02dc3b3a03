//! Tenant limits shared through Redis (`[cluster.limits] backend = "redis"`): three
//! `airlockd serve` processes and one real `redis-server` (or `valkey-server`) on a Unix
//! socket. Skipped, with a notice, when neither binary is installed, unless
//! `AIRLOCK_REQUIRE_REDIS_TEST=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::Redis;
use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use serde_json::{Value, json};

fn start(pki: &Pki, redis: &Redis, cluster: &str, tenants: &str) -> Daemon {
    start_model(pki, redis, cluster, tenants, "")
}

/// [`start`] with more lines for the `[[models]]` entry.
fn start_model(pki: &Pki, redis: &Redis, cluster: &str, tenants: &str, model: &str) -> Daemon {
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\nmax_queue = 256\nmax_active = 32\n{model}"
        ),
        limits: format!(
            "{}max_connections_per_address = 256\n",
            TestConfig::default().limits
        ),
        extra: format!(
            "{tenants}\n[cluster.limits]\nbackend = \"redis\"\nurl = \"{}\"\n{cluster}",
            redis.url()
        ),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

fn chat(max_tokens: u32) -> Value {
    json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "max_tokens": max_tokens
    })
}

/// Sends `count` concurrent requests as `tenant`, spread round-robin over `daemons`;
/// returns each answer's status and body.
async fn hammer(
    pki: &Pki,
    daemons: &[&Daemon],
    tenant: &str,
    count: usize,
    body: &Value,
) -> Vec<(u16, Value)> {
    let targets: Vec<_> = daemons
        .iter()
        .map(|d| (d.client(pki, tenant), d.url("/v1/chat/completions")))
        .collect();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, url) = targets[i % targets.len()].clone();
            let body = body.clone();
            tokio::spawn(async move {
                let resp = client.post(url).json(&body).send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

const TENANTS: &str = r#"
[[tenants]]
name = "acme"
models = ["*"]
cert_cn = ["alice"]
tokens_per_minute = 600

[[tenants]]
name = "rated"
models = ["*"]
cert_cn = ["bob"]
requests_per_minute = 1
burst = 6
"#;

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_across_three_gateways() {
    let Some(redis) = Redis::start() else { return };
    let pki = Pki::new(&["alice", "bob"]);
    let daemons: Vec<Daemon> = (0..3)
        .map(|_| start(&pki, &redis, "timeout = \"2s\"\n", TENANTS))
        .collect();
    let all: Vec<&Daemon> = daemons.iter().collect();
    // (A generous store timeout: this test is about the budgets, not about a slow store,
    // and a loaded CI machine must not turn admissions into 503s.)

    // Tokens per minute: ~100 concurrent requests over the three gateways.
    let started = Instant::now();
    let answers = hammer(&pki, &all, "alice", 99, &chat(8)).await;
    let (mut ok, mut limited, mut served) = (0, 0, 0u64);
    for (status, v) in &answers {
        match status {
            200 => {
                ok += 1;
                served += v["usage"]["total_tokens"].as_u64().unwrap();
            }
            429 => limited += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ok > 0 && limited > 0, "ok {ok}, limited {limited}");
    // What refilled during the run (600 per minute) may be served too, never more.
    let refilled = (600.0 * started.elapsed().as_secs_f64() / 60.0).ceil() as u64;
    assert!(
        served <= 600 + refilled,
        "served {served} tokens > budget 600 + {refilled} refilled, over three gateways"
    );

    // The request rate: one burst (6) across all three, where each alone would allow 6.
    let answers = hammer(&pki, &all, "bob", 30, &chat(4)).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        ok <= 7,
        "{ok} requests served: more than the burst of 6 (+1 replenished)"
    );
    assert!(ok >= 1);
    assert_eq!(ok + limited.len(), 30, "{answers:?}");
    assert_eq!(
        limited[0].1["error"]["code"], "rate_limit_exceeded",
        "{:?}",
        limited[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_refuses_while_the_store_is_down() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let pki = Pki::new(&["alice", "bob"]);
    let daemon = start(
        &pki,
        &redis,
        "timeout = \"250ms\"\non_unavailable = \"closed\"\n",
        TENANTS,
    );
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");
    let ok = client.post(&url).json(&chat(4)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The headers carry the shared figures from the admission script.
    let header = |name: &str| ok.headers()[name].to_str().unwrap().parse::<u32>().unwrap();
    assert_eq!(header("x-ratelimit-limit-tokens"), 600);
    assert!(header("x-ratelimit-remaining-tokens") < 600);

    redis.stop();
    let started = Instant::now();
    let resp = client.post(&url).json(&chat(4)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "limits_unavailable", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    redis.resume();
    let resp = client.post(&url).json(&chat(4)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "not back to the shared limits after a restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_fallback_serves_the_divided_limit() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let pki = Pki::new(&["alice", "bob"]);
    let daemon = start(
        &pki,
        &redis,
        "timeout = \"250ms\"\non_unavailable = \"local\"\nreplicas = 3\n",
        TENANTS,
    );
    let client = daemon.client(&pki, "bob");
    let url = daemon.url("/v1/chat/completions");

    redis.stop();
    // A burst of 6 divided by 3 replicas: 2 served here, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .post(&url)
                .json(&chat(4))
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);

    // Back to the shared limits (a fresh store: the whole burst of 6).
    redis.resume();
    let mut ok = 0;
    for _ in 0..8 {
        if client
            .post(&url)
            .json(&chat(4))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 6, "the shared burst after the store returned");
}

/// The failure matrix's gateway row: `kill -9` of one of three gateways under load. The
/// others keep serving; every 200 a client received has its completion record on the node
/// that answered; every node's chain verifies, the killed one's included; the concurrency
/// slots the dead gateway held come back within one `lease_ttl`.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_mid_load_loses_no_audited_answer() {
    let Some(redis) = Redis::start() else { return };
    let pki = Pki::new(&["alice"]);
    let tenants = "[[tenants]]\nname = \"acme\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n\
                   max_concurrent = 6\n";
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|_| {
            start_model(
                &pki,
                &redis,
                "timeout = \"2s\"\nlease_ttl = \"2s\"\n",
                tenants,
                "test_token_delay = \"25ms\"\n",
            )
        })
        .collect();
    // Two clients per gateway, each sending one request after another (~0.4 s each), so
    // the six shared slots are all in use and the victim holds two when it dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for (node, daemon) in daemons.iter().enumerate() {
        for _ in 0..2 {
            let client = daemon.client(&pki, "alice");
            let url = daemon.url("/v1/chat/completions");
            let stop = std::sync::Arc::clone(&stop);
            clients.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.post(&url).json(&chat(16)).send(),
                    )
                    .await
                    .expect("a request hung");
                    let Ok(resp) = answer else {
                        // The killed gateway: connection refused or reset, at once.
                        assert!(sent.elapsed() < Duration::from_secs(5));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        seen.push((node, 0, String::new(), sent));
                        continue;
                    };
                    let status = resp.status().as_u16();
                    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                    // A body cut off by the kill counts as not received.
                    if resp.bytes().await.is_err() {
                        seen.push((node, 0, String::new(), sent));
                        continue;
                    }
                    seen.push((node, status, id, sent));
                }
                seen
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    daemons[0].kill_9();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    // The two survivors kept serving after the kill, beyond the slots the dead one held
    // (those came back within lease_ttl = 2 s).
    for node in [1, 2] {
        let after = answers
            .iter()
            .filter(|(n, s, _, t)| *n == node && *s == 200 && *t > killed_at)
            .count();
        assert!(after >= 2, "node {node} served {after} after the kill");
    }
    let failed: Vec<_> = answers
        .iter()
        .filter(|(n, s, _, _)| *n != 0 && *s == 0)
        .collect();
    assert!(
        failed.is_empty(),
        "a live gateway failed requests: {failed:?}"
    );
    let refused = answers
        .iter()
        .filter(|(_, s, _, _)| *s != 200 && *s != 0)
        .count();
    assert_eq!(
        refused,
        answers.iter().filter(|(_, s, _, _)| *s == 429).count(),
        "only 429s (all six slots busy) may be refused: {answers:?}"
    );
    // Every 200 received has its completion record (status 200) on the node that answered.
    for (node, daemon) in daemons.iter().enumerate() {
        let db = daemon.audit_db();
        let completed: std::collections::HashSet<String> = common::audit_records(&db)
            .into_iter()
            .filter(|r| r["kind"] == "complete" && r["status"] == 200)
            .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
            .collect();
        let received: Vec<&String> = answers
            .iter()
            .filter(|(n, s, _, _)| *n == node && *s == 200)
            .map(|(_, _, id, _)| id)
            .collect();
        assert!(!received.is_empty(), "node {node} served nothing");
        for id in received {
            assert!(
                completed.contains(id),
                "node {node}: a 200 without its completion record ({id})"
            );
        }
    }
    // Every chain verifies; the killed node's too, from what reached its disk.
    for mut daemon in daemons.drain(1..) {
        daemon.stop();
        let (code, out) = daemon.verify_audit(&pki);
        assert_eq!(code, 0, "{out}");
    }
    let (code, out) = daemons[0].verify_audit(&pki);
    assert_eq!(code, 0, "the killed node's log: {out}");
}
