//! The in-process request load shared by `audit-bench` and `metrics-bench`: `concurrency`
//! tasks send `requests` small chat completions (test engine, 8 tokens) straight into the
//! daemon's request handler, as a client with a certificate for `bench`, and the p50/p99
//! latency in milliseconds comes back.

use std::sync::Arc;
use std::time::Instant;

use airlock_daemon::app::App;
use airlock_daemon::identity::{CertIdentity, ConnInfo};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub async fn chat_latency_ms(
    app: &Arc<App>,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let conn = Arc::new(ConnInfo {
        peer_addr: None,
        trusted_proxy: false,
        tls_client_cert: Some(CertIdentity {
            common_name: Some("bench".into()),
            ..CertIdentity::default()
        }),
        alpn: None,
        forwarded_client_cert: None,
        forwarded_for: None,
    });
    let body = Bytes::from_static(
        br#"{"model":"test-model","max_tokens":8,"messages":[{"role":"user","content":"one two three four five six seven eight"}]}"#,
    );
    let per_task = requests / concurrency.max(1);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (app, conn, body) = (Arc::clone(app), Arc::clone(&conn), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let req = hyper::Request::builder()
                    .method("POST")
                    .uri("/v1/chat/completions")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let start = Instant::now();
                let resp =
                    airlock_daemon::pipeline::handle(Arc::clone(&app), Arc::clone(&conn), req)
                        .await;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                let _ = resp.into_body().collect().await;
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(times)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    anyhow::ensure!(!all.is_empty(), "no requests ran");
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize];
    Ok((pct(0.50), pct(0.99)))
}
