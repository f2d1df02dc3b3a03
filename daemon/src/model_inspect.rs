//! The human-readable table of `airlockd model inspect` (`--json` prints the report itself).

use std::fmt::Write as _;

use airlock_engine::ModelReport;

/// Bytes as `1.23 GiB` / `456.0 MiB` / `789 B`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

/// `135.0M`, `1.24B`.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The report as an aligned text table.
pub fn render(r: &ModelReport) -> String {
    let mut s = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(s, "model          {}", r.path.display());
    let _ = writeln!(
        s,
        "format         {} ({} on disk)",
        r.format,
        size(r.file_bytes)
    );
    let _ = writeln!(s, "architecture   {}", r.architecture);
    let _ = writeln!(
        s,
        "parameters     {} ({})",
        count(r.parameters),
        r.parameters
    );
    let _ = writeln!(
        s,
        "shape          {} layers, hidden {}, {} heads / {} KV heads of {}, vocabulary {}",
        r.layers, r.hidden_size, r.attention_heads, r.kv_heads, r.head_dim, r.vocab_size
    );
    let _ = writeln!(s, "context        {} tokens", r.context_length);
    let _ = writeln!(s, "chat template  {}", yes_no(r.chat_template));
    let _ = writeln!(
        s,
        "tensors        {} tensors, {} as stored",
        r.tensor_count,
        size(r.weight_bytes)
    );
    let _ = writeln!(
        s,
        "  {:<8} {:>8} {:>10} {:>12} {:>8} {:>8}",
        "type", "tensors", "params", "bytes", "bytes%", "count%"
    );
    for t in &r.tensor_types {
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>10} {:>12} {:>7.1}% {:>7.1}%",
            t.dtype,
            t.tensors,
            count(t.parameters),
            size(t.bytes),
            t.bytes_share * 100.0,
            t.count_share * 100.0
        );
    }
    let kv = &r.kv_bytes_per_token;
    let _ = writeln!(
        s,
        "KV cache       {} per token on cpu (f16; {} with kv_cache_dtype = \"f32\"), {} on wgpu (f16)",
        size(kv.cpu_f16 as u64),
        size(kv.cpu_f32 as u64),
        size(kv.wgpu_f16 as u64)
    );
    let _ = writeln!(
        s,
        "memory         one sequence at the full {}-token context:",
        r.context_length
    );
    for m in &r.memory {
        let _ = writeln!(
            s,
            "  {:<5} {} weights {} + KV {} = {}",
            m.device,
            m.weights,
            size(m.weights_bytes),
            size(m.kv_bytes_full_context),
            size(m.total_bytes)
        );
    }
    match &r.decode_estimate {
        Some(d) => {
            let _ = writeln!(
                s,
                "decode         ~{:.1} tokens/s (short context), ~{:.1} tokens/s (full context) \
                 on this machine's cpu",
                d.tokens_per_s, d.tokens_per_s_full_context
            );
            let _ = writeln!(
                s,
                "               measured read bandwidth {:.1} GB/s ({} threads) / {} read per \
                 token",
                d.read_bandwidth_gb_s,
                d.threads,
                size(d.bytes_per_token)
            );
            let _ = writeln!(s, "               {}", d.note);
        }
        None => {
            let _ = writeln!(s, "decode         not estimated (--no-bandwidth)");
        }
    }
    s
}
