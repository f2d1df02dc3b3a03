//! Policy benchmarks: per-request API key authentication with a warm verified-key cache
//! (the steady state), one cold argon2id verification (a cache miss), and filter
//! throughput in MB/s for prompts (`check_input`) and streamed output (`StreamFilter`).
//! Prints figures; asserts nothing.
//!
//!     cargo run --bin policy-bench            # dev profile; airlock-policy is built at opt-level 2

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use airlock_policy::filter::{
    Action, Detector, FilterSet, FilterSpec, Matcher, RuleSpec, StreamFilter,
};
use airlock_policy::{ApiKey, KeyId, KeyRecord, VerifiedKeyCache};

fn main() -> anyhow::Result<()> {
    auth()?;
    filters()?;
    Ok(())
}

fn auth() -> anyhow::Result<()> {
    // 1,000 keys in the table, as the daemon's snapshot holds them.
    let now = SystemTime::now();
    let cache = VerifiedKeyCache::new(Duration::from_secs(300), 10_000);
    let mut table: HashMap<KeyId, KeyRecord> = HashMap::new();
    let mut keys = Vec::new();
    let key = ApiKey::generate();
    let t = Instant::now();
    let phc = airlock_policy::hash::hash_key(&key)?;
    let hash_time = t.elapsed();
    let t = Instant::now();
    let ok = airlock_policy::hash::verify_key(&key, &phc)?;
    let verify_time = t.elapsed();
    anyhow::ensure!(ok, "verification failed");
    for _ in 0..1000 {
        let key = ApiKey::generate();
        let record = KeyRecord {
            id: key.id().clone(),
            tenant: "acme".into(),
            phc: phc.clone(),
            created_at: now,
            expires_at: None,
            bound_cert_sha256: None,
            revoked: false,
        };
        cache.insert(&key, &record, now);
        table.insert(key.id().clone(), record);
        keys.push(key.expose().to_owned());
    }
    let iterations = 200_000;
    let t = Instant::now();
    let mut hits = 0u32;
    for i in 0..iterations {
        // What the daemon does per request on a warm cache: format + checksum, record
        // lookup, usability, HMAC-keyed cache check.
        let presented = &keys[i % keys.len()];
        let key = ApiKey::parse(black_box(presented))?;
        let record = table
            .get(key.id())
            .ok_or_else(|| anyhow::anyhow!("missing"))?;
        if record.usable(now) && cache.check(&key, record, now) {
            hits += 1;
        }
    }
    let per = t.elapsed() / iterations as u32;
    anyhow::ensure!(hits as usize == iterations, "cache misses");
    println!(
        "auth: warm-cache per-request cost: {:.2} µs ({iterations} requests, 1000 keys)",
        per.as_secs_f64() * 1e6
    );
    println!(
        "auth: argon2id (m=19456 KiB, t=2, p=1) hash {:.1} ms, verify (cache miss) {:.1} ms",
        hash_time.as_secs_f64() * 1e3,
        verify_time.as_secs_f64() * 1e3
    );
    Ok(())
}

fn corpus() -> String {
    let para = "The quarterly report covers revenue, churn and hiring plans for the next cycle. \
        Contact the team lead at jane.doe@example.com or call (555) 123-4567 for details. \
        Ticket numbers like 1234567890123456 are not cards; 4111 1111 1111 1111 is one. \
        The VPN gateway sits at 10.20.30.40 and fe80::1ff:fe23:4567:890a internally. \
        Wire to DE89 3704 0044 0532 0130 00 before Friday; SSN 123-45-6789 is on file.\n";
    para.repeat(16 * 1024 * 1024 / para.len())
}

fn filters() -> anyhow::Result<()> {
    let mut rules: Vec<RuleSpec> = Detector::ALL
        .iter()
        .map(|d| RuleSpec {
            id: d.name().into(),
            action: Action::Redact,
            matcher: Matcher::Detector(*d),
            case_insensitive: false,
        })
        .collect();
    for (i, lit) in ["project zeus", "internal only", "do not distribute"]
        .iter()
        .enumerate()
    {
        rules.push(RuleSpec {
            id: format!("deny-{i}"),
            action: Action::Deny,
            matcher: Matcher::Literal((*lit).into()),
            case_insensitive: true,
        });
    }
    rules.push(RuleSpec {
        id: "deny-sql".into(),
        action: Action::Deny,
        matcher: Matcher::Regex(r"DROP\s+TABLE\s+\w+".into()),
        case_insensitive: true,
    });
    let set = FilterSet::compile(&FilterSpec {
        rules,
        max_input_bytes: 64 << 20,
    })?;
    let text = corpus();
    let mb = text.len() as f64 / 1e6;

    let t = Instant::now();
    let out = set
        .check_input(&text)
        .map_err(|d| anyhow::anyhow!("denied by {}", d.rule_id))?;
    let secs = t.elapsed().as_secs_f64();
    let redactions: usize = out.redactions.iter().map(|(_, n)| n).sum();
    println!(
        "filter: prompt (10 detectors + 4 deny rules): {:.1} MB/s over {mb:.1} MB, {redactions} redactions",
        mb / secs
    );

    let clean = "plain words without anything sensitive in them at all, repeated. "
        .repeat(16 * 1024 * 1024 / 66);
    let cmb = clean.len() as f64 / 1e6;
    let t = Instant::now();
    black_box(
        set.check_input(&clean)
            .map_err(|d| anyhow::anyhow!("denied by {}", d.rule_id))?,
    );
    println!(
        "filter: prompt, clean text: {:.1} MB/s over {cmb:.1} MB",
        cmb / t.elapsed().as_secs_f64()
    );

    // Streaming in token-sized pieces (~4 bytes), as model output arrives.
    let sample = &text[..2 << 20];
    let smb = sample.len() as f64 / 1e6;
    let t = Instant::now();
    let mut stream = StreamFilter::new(&set);
    let mut emitted = 0usize;
    let mut start = 0;
    while start < sample.len() {
        let mut end = (start + 4).min(sample.len());
        while !sample.is_char_boundary(end) {
            end += 1;
        }
        emitted += stream.push(&sample[start..end]).len();
        start = end;
    }
    emitted += stream.finish().len();
    println!(
        "filter: streamed output in 4-byte chunks: {:.2} MB/s over {smb:.1} MB ({emitted} bytes out)",
        smb / t.elapsed().as_secs_f64()
    );
    Ok(())
}
