//! `stream_filter`: model output through the streaming output filter, cut into chunks the
//! input chooses. `filter/stream.rs` promises that the result is a function of the whole
//! text alone: any chunking gives what the one-chunk (non-streaming) path gives. Input: a
//! count `k`, `k` chunk lengths, then the text.

use std::sync::OnceLock;

use airlock_policy::filter::{
    Action, Detector, FilterSet, FilterSpec, Matcher, RuleSpec, StreamFilter,
};

use crate::split;

/// Deny and redact rules of every kind, all with matches shorter than `HOLD_BACK` (the
/// documented limit of split-safety).
fn filters() -> &'static FilterSet {
    static SET: OnceLock<FilterSet> = OnceLock::new();
    SET.get_or_init(|| {
        let rule = |id: &str, action, matcher, case_insensitive| RuleSpec {
            id: id.to_owned(),
            action,
            matcher,
            case_insensitive,
        };
        let mut rules = vec![
            rule(
                "no_phrase",
                Action::Deny,
                Matcher::Literal("forbidden phrase".into()),
                true,
            ),
            rule(
                "no_sql",
                Action::Deny,
                Matcher::Regex(r"drop\s{1,8}table\b".into()),
                true,
            ),
            rule(
                "secret",
                Action::Redact,
                Matcher::Regex(r"\bsecret-[0-9]{4}\b".into()),
                false,
            ),
        ];
        for d in Detector::ALL {
            rules.push(rule(d.name(), Action::Redact, Matcher::Detector(d), false));
        }
        let spec = FilterSpec {
            rules,
            ..FilterSpec::default()
        };
        FilterSet::compile(&spec).unwrap_or_else(|e| panic!("the target's filters compile: {e}"))
    })
}

pub fn run(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 32).min(rest.len());
    let (lengths, text) = rest.split_at(k);
    let text = split::text(text);
    let set = filters();
    let _ = set.check_input(&text);
    let whole = set.check_output_counted(&text);

    let mut stream = StreamFilter::new(set);
    let mut out = String::new();
    let mut at = 0;
    for &len in lengths.iter().cycle().take(text.len().max(1)) {
        if at >= text.len() {
            break;
        }
        let mut end = (at + usize::from(len).max(1)).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(&stream.push(&text[at..end]));
        at = end;
    }
    if at < text.len() {
        out.push_str(&stream.push(&text[at..]));
    }
    if stream.denied().is_none() {
        out.push_str(&stream.finish());
    }
    assert_eq!(
        stream.denied(),
        whole.denied.as_deref(),
        "deny differs by chunking"
    );
    assert_eq!(out, whole.text, "output differs by chunking");
    let mut streamed = stream.redactions().to_vec();
    let mut expected = whole.redactions;
    streamed.sort();
    expected.sort();
    assert_eq!(streamed, expected, "redaction counts differ by chunking");
    if whole.denied.is_some() {
        assert!(
            !out.to_ascii_lowercase().contains("forbidden phrase"),
            "denied text was released"
        );
    }
}

/// Seeds: each detector's shape, deny matches, multibyte text.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |lengths: &[u8], text: &str| {
        let mut out = vec![u8::try_from(lengths.len()).unwrap_or(0)];
        out.extend_from_slice(lengths);
        out.extend_from_slice(text.as_bytes());
        out
    };
    vec![
        (
            "pii",
            seed(
                &[1, 3, 7],
                "Mail bob@example.com or call +1 (415) 555-0132; SSN 123-45-6789, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, host 192.168.10.1 / 2001:db8::1, key AKIAIOSFODNN7EXAMPLE, secret-1234.",
            ),
        ),
        (
            "deny_late",
            seed(
                &[64, 1],
                &format!(
                    "{}then FORBIDDEN   phrase? no: Forbidden phrase.",
                    "filler ".repeat(60)
                ),
            ),
        ),
        (
            "deny_sql",
            seed(&[5], "ok; DROP \t TABLE users; secret-0000"),
        ),
        (
            "multibyte",
            seed(
                &[1, 2],
                "héllo wörld ✓ 𝄞 secret-9999 ünïcödé bob@exämple.com",
            ),
        ),
        (
            "private_key",
            seed(
                &[9],
                "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----",
            ),
        ),
        (
            "airlock_key",
            seed(
                &[3],
                "key alk_AbCdEfGhIjKl_0123456789abcdefghijklQwErTy here",
            ),
        ),
    ]
}
