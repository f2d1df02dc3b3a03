//! Identity and tenant policy through the real daemon: 401/403/429 with their headers, API
//! keys created and revoked while it runs, the token budget under 200 concurrent requests,
//! and prompt redaction observed through the (echoing) test engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use serde_json::{Value, json};

const TENANTS: &str = r#"
[auth]
key_db = "KEYDB"

[[tenants]]
name = "acme"
models = ["test-model"]
cert_cn = ["alice"]
max_tokens = 50
[[tenants.filters]]
id = "no-zeus"
action = "deny"
literal = "project zeus"
case_insensitive = true
[[tenants.filters]]
id = "pii-email"
action = "redact"
detector = "email"
apply = "prompt"

[[tenants]]
name = "beta"
models = ["another-model"]
cert_cn = ["bob"]

[[tenants]]
name = "keyed"
models = ["*"]
requests_per_minute = 3
burst = 3
"#;

struct Setup {
    pki: Pki,
    daemon: Daemon,
    config: std::path::PathBuf,
}

fn start(tenants: &str, model_extra: &str) -> Setup {
    start_with_limits(tenants, model_extra, "")
}

/// [`start`] with extra `[limits]` lines.
fn start_with_limits(tenants: &str, model_extra: &str, limits: &str) -> Setup {
    let pki = Pki::new(&["alice", "bob", "carol"]);
    let keydb = pki.dir().join("keys.db");
    let cfg = TestConfig {
        models: format!("[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\n{model_extra}"),
        extra: tenants.replace("KEYDB", keydb.to_str().unwrap()),
        limits: format!("{}{limits}", TestConfig::default().limits),
        ..TestConfig::default()
    };
    let text = cfg.to_toml(&pki);
    let config = pki.dir().join("policy.toml");
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start_toml(&text);
    Setup {
        pki,
        daemon,
        config,
    }
}

fn create_key(config: &std::path::Path, tenant: &str) -> String {
    let (status, stdout, stderr) = common::airlockd(&[
        "keys",
        "create",
        "--tenant",
        tenant,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("alk_"), "{stdout}");
    key
}

/// A new key works at once: an unknown key id makes the daemon look at the key database
/// again before refusing (it used to take up to a refresh interval, 250 ms–1 s).
async fn first_accepted(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> reqwest::header::HeaderMap {
    let (status, headers, body) = post(client.post(url).bearer_auth(key), &chat("hi")).await;
    assert_eq!(status, 200, "a key used right after `keys create`: {body}");
    headers
}

/// Renames a SQLite database and its `-wal`/`-shm` files, where present.
fn move_db(from: &std::path::Path, to: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let src = format!("{}{suffix}", from.display());
        if std::path::Path::new(&src).exists() {
            std::fs::rename(&src, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

fn chat(content: &str) -> Value {
    json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 40})
}

async fn post(
    req: reqwest::RequestBuilder,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn certificates_keys_and_refusals() {
    let s = start(TENANTS, "");
    let url = s.daemon.url("/v1/chat/completions");

    // A certificate that belongs to a tenant.
    let alice = s.daemon.client(&s.pki, "alice");
    let (status, _, body) = post(alice.post(&url), &chat("hello")).await;
    assert_eq!(status, 200, "{body}");

    // A tenant that may not use this model: 403.
    let bob = s.daemon.client(&s.pki, "bob");
    let (status, _, body) = post(bob.post(&url), &chat("hello")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");

    // A verified certificate of no tenant, no key: 401 (deny by default).
    let carol = s.daemon.client(&s.pki, "carol");
    let (status, _, body) = post(carol.post(&url), &chat("hello")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // An API key, in either header.
    let key = create_key(&s.config, "keyed");
    let headers = first_accepted(&carol, &url, &key).await;
    assert_eq!(headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "2");
    assert!(headers.contains_key("x-ratelimit-reset-requests"));
    let (status, _, _) = post(carol.post(&url).header("x-api-key", &key), &chat("hi")).await;
    assert_eq!(status, 200);

    // A mistyped key and a well-formed unknown key: 401, never echoed.
    let mut typo = key.clone();
    typo.pop();
    typo.push(if key.ends_with('A') { 'B' } else { 'A' });
    let unknown = airlock_policy::ApiKey::generate().expose().to_owned();
    for bad in [typo, unknown] {
        let resp = carol
            .post(&url)
            .bearer_auth(&bad)
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let text = resp.text().await.unwrap();
        assert!(!text.contains(&bad[4..]), "echoed the key: {text}");
    }

    // The burst is 3: the third request passes, the fourth gets 429 with Retry-After and
    // the headers.
    let (status, headers, _) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let resp = carol
        .post(&url)
        .bearer_auth(&key)
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn revocation_takes_effect_while_running() {
    let s = start(
        &TENANTS.replace("requests_per_minute = 3\nburst = 3\n", ""),
        "",
    );
    let url = s.daemon.url("/v1/chat/completions");
    let carol = s.daemon.client(&s.pki, "carol");
    let key = create_key(&s.config, "keyed");
    first_accepted(&carol, &url, &key).await;
    let id = &key[4..16];
    let (st, out, err) =
        common::airlockd(&["keys", "revoke", id, "--config", s.config.to_str().unwrap()]);
    assert!(st.success(), "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        let (status, _, _) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "revoked key still accepted after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, out, _) = common::airlockd(&["keys", "list", "--config", s.config.to_str().unwrap()]);
    assert!(st.success());
    assert!(out.contains(id) && out.contains("revoked"), "{out}");
    assert!(!out.contains(&key[16..]), "list shows a secret: {out}");
}

/// The create race, as a benchmark hit it: a burst of requests on a key created a moment
/// ago. Every one is served; none is refused as unknown (401) or throttled (429) because
/// the burst missed the verified-key cache all at once.
#[tokio::test]
async fn a_burst_on_a_new_key_is_served_not_refused_or_throttled() {
    let s = start(
        &TENANTS.replace("requests_per_minute = 3\nburst = 3\n", ""),
        "",
    );
    let url = s.daemon.url("/v1/chat/completions");
    let carol = s.daemon.client(&s.pki, "carol");
    let key = create_key(&s.config, "keyed");
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let req = carol.post(&url).bearer_auth(&key);
            tokio::spawn(async move { post(req, &chat("hi")).await })
        })
        .collect();
    for request in burst {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // And a second new key from the same client right after.
    let other = create_key(&s.config, "keyed");
    first_accepted(&carol, &url, &other).await;
}

/// Sends `typo` (a wrong secret for a real key id: well-formed, so each try is hashed and
/// charged) until the pre-hash throttle answers 429; returns how many 401s came first.
async fn spend_guessing_budget(client: &reqwest::Client, url: &str, typo: &str) -> usize {
    let mut refused = 0;
    loop {
        let (status, _, body) = post(client.post(url).bearer_auth(typo), &chat("hi")).await;
        if status == 429 {
            return refused;
        }
        assert_eq!(status, 401, "{body}");
        refused += 1;
        assert!(refused < 40, "never throttled");
    }
}

/// A client that spent its pre-hash throttle (typos of a real key) is not kept throttled
/// once its real key verifies: the attempts are forgiven, not merely refilled one by one.
#[tokio::test]
async fn a_key_that_verifies_clears_the_throttle() {
    let s = start(
        &TENANTS.replace("requests_per_minute = 3\nburst = 3\n", ""),
        "",
    );
    let url = s.daemon.url("/v1/chat/completions");
    let carol = s.daemon.client(&s.pki, "carol");
    let key = create_key(&s.config, "keyed");
    // Wrong secrets for the real id: well-formed, so each is hashed and charged.
    let typo = common::wrong_secret(&key);
    // The burst is 10 verifications, then one per 6 s (on a slow machine the hashing itself
    // may refill one or two: go on until the first 429).
    let refused = spend_guessing_budget(&carol, &url, &typo).await;
    assert!(refused >= 10, "throttled after {refused}");
    // Throttled: even the right key is refused before hashing until one attempt refills.
    let started = Instant::now();
    loop {
        let (status, headers, body) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never refilled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Forgiven: a full burst of misses is available again (one refilled attempt, as
    // before the fix, would throttle the second of these).
    for i in 0..5 {
        let (status, _, body) = post(carol.post(&url).bearer_auth(&typo), &chat("hi")).await;
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
}

/// A reload does not refill the key-guessing throttle: a client that spent its burst of
/// wrong secrets is still throttled right after SIGHUP (it used to get a fresh burst of 10
/// with every new configuration generation).
#[tokio::test]
async fn a_reload_does_not_refill_the_guessing_throttle() {
    let s = start(
        &TENANTS.replace("requests_per_minute = 3\nburst = 3\n", ""),
        "",
    );
    let url = s.daemon.url("/v1/chat/completions");
    let carol = s.daemon.client(&s.pki, "carol");
    let key = create_key(&s.config, "keyed");
    let typo = common::wrong_secret(&key);
    spend_guessing_budget(&carol, &url, &typo).await;
    let before = s.daemon.logs().matches("reload complete").count();
    s.daemon.signal("HUP");
    assert!(
        s.daemon
            .wait_for_log_count("reload complete", before + 1, Duration::from_secs(20)),
        "no reload: {}",
        s.daemon.logs()
    );
    // One attempt refills every 6 s: five tries right after the reload must meet a 429
    // (a fresh throttle would answer all five with 401 from its burst of 10).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _, _) = post(carol.post(&url).bearer_auth(&typo), &chat("hi")).await;
        statuses.push(status);
    }
    assert!(
        statuses.contains(&429),
        "throttle refilled by the reload: {statuses:?}"
    );
}

/// Revocation does not fail open: while the key database cannot be read, the daemon serves
/// from its last good copy for at most 5 s, then refuses API keys with 503
/// `auth_unavailable` (even a key it has cached) and `/readyz` fails; both recover by
/// themselves once the database reads again. Certificates keep working throughout.
#[tokio::test]
async fn an_unreadable_key_database_fails_closed_then_recovers() {
    let tenants = TENANTS.replace("requests_per_minute = 3\nburst = 3\n", "")
        + "\n[admin]\naddress = \"127.0.0.1:0\"\n";
    let s = start(&tenants, "");
    let url = s.daemon.url("/v1/chat/completions");
    let carol = s.daemon.client(&s.pki, "carol");
    let alice = s.daemon.client(&s.pki, "alice");
    let key = create_key(&s.config, "keyed");
    first_accepted(&carol, &url, &key).await;
    let ready = |client: reqwest::Client, url: String| async move {
        client.get(url).send().await.unwrap().status().as_u16()
    };
    assert_eq!(ready(carol.clone(), s.daemon.url("/readyz")).await, 200);

    // Swap the database for a file that is not one (as root, chmod would not stop a read),
    // its WAL moved along (SQLite would read the latest pages from a WAL left behind).
    let db = s.pki.dir().join("keys.db");
    let saved = s.pki.dir().join("keys.db.saved");
    move_db(&db, &saved);
    std::fs::write(&db, vec![0x5a_u8; 16384]).unwrap();
    let broken_at = Instant::now();
    let status = loop {
        let (status, headers, body) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
        if status != 200 {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "auth_unavailable", "{body}");
            assert!(headers.contains_key("retry-after"));
            break status;
        }
        assert!(
            broken_at.elapsed() < Duration::from_secs(15),
            "keys still accepted from a stale table"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503);
    // Not before the bound (5 s), less a margin for a late check.
    assert!(
        broken_at.elapsed() >= Duration::from_secs(4),
        "{:?}",
        broken_at.elapsed()
    );
    assert_eq!(ready(carol.clone(), s.daemon.url("/readyz")).await, 503);
    let report = s.daemon.admin_status().await;
    assert_eq!(report["ready"], false, "{report}");
    assert!(
        report["not_ready_reason"]
            .as_str()
            .unwrap()
            .starts_with("keys_unavailable"),
        "{report}"
    );
    // The refresher logs on its next check after the bound, which may come just after the
    // request that was already refused.
    let logged_by = Instant::now() + Duration::from_secs(5);
    while !s.daemon.logs().contains("KEY DATABASE UNREADABLE") && Instant::now() < logged_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.daemon.logs().contains("KEY DATABASE UNREADABLE"),
        "{}",
        s.daemon.logs()
    );
    // Certificates do not depend on the key database.
    let (status, _, body) = post(alice.post(&url), &chat("hello")).await;
    assert_eq!(status, 200, "{body}");

    move_db(&saved, &db);
    let restored_at = Instant::now();
    loop {
        let (status, _, body) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            restored_at.elapsed() < Duration::from_secs(10),
            "did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready(carol.clone(), s.daemon.url("/readyz")).await, 200);
    assert_eq!(s.daemon.admin_status().await["ready"], true);
    // A revocation made now is seen: the daemon reads the restored file, not a stale one.
    let (st, out, err) = common::airlockd(&[
        "keys",
        "revoke",
        &key[4..16],
        "--config",
        s.config.to_str().unwrap(),
    ]);
    assert!(st.success(), "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        let (status, _, _) = post(carol.post(&url).bearer_auth(&key), &chat("hi")).await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "revocation not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn prompt_filters_redact_and_deny() {
    let s = start(TENANTS, "");
    let url = s.daemon.url("/v1/chat/completions");
    let alice = s.daemon.client(&s.pki, "alice");
    let (status, _, body) = post(alice.post(&url), &chat("write to bob@example.com today")).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("[REDACTED:email]"), "{content}");
    assert!(!content.contains("bob@example.com"), "{content}");

    let (status, _, body) = post(alice.post(&url), &chat("tell me about Project ZEUS")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "content_policy_violation");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no-zeus") && !message.to_lowercase().contains("zeus about"));
}

/// Issue 11's reproduced detector misses: a valid number inside a longer digit run (a card
/// followed by its expiry or CVV, an IBAN followed by a currency) passed a deny rule and was
/// not redacted, because the greedy match failed its checksum as a whole.
#[tokio::test]
async fn numbers_inside_longer_digit_runs_are_denied_and_redacted() {
    let tenants = r#"
[auth]
key_db = "KEYDB"

[[tenants]]
name = "denies"
models = ["test-model"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "no-cards"
action = "deny"
detector = "payment_card"

[[tenants]]
name = "redacts"
models = ["test-model"]
cert_cn = ["bob"]
max_tokens = 60
[[tenants.filters]]
id = "cards"
action = "redact"
detector = "payment_card"
apply = "prompt"
[[tenants.filters]]
id = "ibans"
action = "redact"
detector = "iban"
apply = "prompt"
"#;
    let s = start(tenants, "");
    let url = s.daemon.url("/v1/chat/completions");
    let alice = s.daemon.client(&s.pki, "alice");
    for prompt in [
        "pay with 4111111111111111 12/25 please",
        "card 4111 1111 1111 1111 123",
    ] {
        let (status, _, body) = post(alice.post(&url), &chat(prompt)).await;
        assert_eq!(status, 403, "{prompt}: {body}");
        assert_eq!(body["error"]["code"], "content_policy_violation", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-cards"),
            "{body}"
        );
    }
    let bob = s.daemon.client(&s.pki, "bob");
    let prompt = "card 4111 1111 1111 1111 123 to DE89 3704 0044 0532 0130 00 EUR";
    let (status, _, body) = post(bob.post(&url), &chat(prompt)).await;
    assert_eq!(status, 200, "{body}");
    // The test engine echoes what it was given: the model never saw either number.
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("[REDACTED:payment_card]"), "{content}");
    assert!(content.contains("[REDACTED:iban]"), "{content}");
    assert!(
        !content.contains("4111") && !content.contains("3704"),
        "{content}"
    );
}

#[tokio::test]
async fn token_budget_holds_under_200_concurrent_requests() {
    const BUDGET: u64 = 3000;
    let tenants = format!(
        "[[tenants]]\nname = \"acme\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\ntokens_per_minute = {BUDGET}\n"
    );
    // 200 concurrent requests open up to 200 connections from one address: above the
    // default per-address cap (64), which tests/hardening_conn.rs covers.
    let s = start_with_limits(
        &tenants,
        "max_queue = 256\nmax_active = 32\n",
        "max_connections_per_address = 256\n",
    );
    let url = s.daemon.url("/v1/chat/completions");
    let alice = s.daemon.client(&s.pki, "alice");
    let body = json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "max_tokens": 8
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, url, body) = (alice.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (status, v)
        }));
    }
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
    assert!(ok > 0 && limited > 0, "ok {ok}, limited {limited}");
    // The budget is a token bucket refilling at BUDGET per minute: on a loaded machine the
    // run takes seconds, and what refilled meanwhile may be served too, but never more.
    let refilled = (BUDGET as f64 * started.elapsed().as_secs_f64() / 60.0).ceil() as u64;
    assert!(
        served <= BUDGET + refilled,
        "served {served} tokens > budget {BUDGET} + {refilled} refilled"
    );
}

#[tokio::test]
async fn streamed_output_is_filtered_across_tokens() {
    let tenants = r#"
[[tenants]]
name = "acme"
models = ["*"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "no-seven-eight"
action = "deny"
literal = "seven eight"
apply = "output"
"#;
    let s = start(tenants, "");
    let url = s.daemon.url("/v1/chat/completions");
    let alice = s.daemon.client(&s.pki, "alice");
    let body = json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": common::TWENTY_WORDS}],
        "max_tokens": 40,
        "stream": true
    });
    let resp = alice.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut content = String::new();
    let mut finish = None;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(finish.as_deref(), Some("content_filter"), "{text}");
    assert!(!content.contains("seven eight"), "{content}");

    // The same output, not streamed: refused naming the rule.
    let mut body = body;
    body["stream"] = json!(false);
    let (status, _, body) = post(alice.post(&url), &body).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-seven-eight")
    );
}

#[tokio::test]
async fn a_certificate_bound_key_needs_its_certificate() {
    let s = start(TENANTS, "");
    let url = s.daemon.url("/v1/chat/completions");
    let (cert, _) = s.pki.client("carol");
    let (status, stdout, stderr) = common::airlockd(&[
        "keys",
        "create",
        "--tenant",
        "keyed",
        "--bind-cert",
        cert.to_str().unwrap(),
        "--expires",
        "90d",
        "--config",
        s.config.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let key = stdout.trim().to_owned();
    let carol = s.daemon.client(&s.pki, "carol");
    first_accepted(&carol, &url, &key).await;
    let alice = s.daemon.client(&s.pki, "alice");
    let (status, _, body) = post(alice.post(&url).bearer_auth(&key), &chat("hi")).await;
    assert_eq!(status, 401, "{body}");
    let (_, list, _) = common::airlockd(&["keys", "list", "--config", s.config.to_str().unwrap()]);
    assert!(
        list.contains("active") && !list.contains(&key[16..]),
        "{list}"
    );
}

/// The prompt cap and the token reservation use the model's own count (the test engine:
/// one token per word plus one per chat message), not a byte estimate: both boundaries are
/// exact.
#[tokio::test]
async fn prompt_cap_and_reservation_use_the_real_token_count() {
    const CAPPED: &str = r#"
[[tenants]]
name = "capped"
models = ["*"]
cert_cn = ["alice"]
max_prompt_tokens = 21
tokens_per_minute = 30
"#;
    let s = start(CAPPED, "");
    let url = s.daemon.url("/v1/chat/completions");
    let alice = s.daemon.client(&s.pki, "alice");
    let ask = |content: String, max_tokens: u32| json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens});

    // 21 words + 1 for the message: one over the cap, refused with both numbers.
    let over = format!("{} more", common::TWENTY_WORDS);
    let (status, headers, body) = post(alice.post(&url), &ask(over, 1)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "prompt_too_long");
    assert_eq!(body["error"]["param"], "messages");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("22") && message.contains("21"),
        "{message}"
    );
    // An authenticated refusal still carries the tenant's limits.
    assert_eq!(headers["x-ratelimit-limit-tokens"], "30");

    // Exactly at the cap, and 21 + 9 = the whole per-minute budget: admitted.
    let at_cap = || common::TWENTY_WORDS.to_owned();
    let (status, _, body) = post(alice.post(&url), &ask(at_cap(), 9)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 21, "{body}");

    // 21 + 10 can never fit in 30 tokens a minute.
    let (status, headers, body) = post(alice.post(&url), &ask(at_cap(), 10)).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("alone"),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
}

/// The `keys` commands read only `[auth]` and `[[tenants]]`: a packaged config whose TLS and
/// audit keys are systemd credentials (`credential:NAME`, unreadable outside the service)
/// still lets an operator manage keys.
#[test]
fn keys_commands_do_not_need_the_service_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let keydb = dir.path().join("keys.db");
    let config = dir.path().join("airlockd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[listener]
address = "127.0.0.1:0"
[listener.tls]
cert = "server.pem"
key = "credential:tls.key"
client_ca = "ca.pem"

[[models]]
name = "m"
path = "/nonexistent"

[audit]
db = "audit.db"
signing_key = "credential:audit-signing.key"
digest_key = "credential:audit-digest.key"

[auth]
key_db = "{}"

[[tenants]]
name = "acme"
models = ["*"]
"#,
            keydb.display()
        ),
    )
    .unwrap();
    let key = create_key(&config, "acme");
    assert!(key.len() > 20);
    let (status, stdout, stderr) =
        common::airlockd(&["keys", "list", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("acme"), "{stdout}");
    // serve still needs them: check-config names the credential it cannot resolve.
    let (status, _, stderr) =
        common::airlockd(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("listener.tls.key"), "{stderr}");
}
