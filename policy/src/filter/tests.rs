use super::*;

fn redactor(d: Detector) -> FilterSet {
    FilterSet::compile(&FilterSpec {
        rules: vec![RuleSpec {
            id: d.name().into(),
            action: Action::Redact,
            matcher: Matcher::Detector(d),
            case_insensitive: false,
        }],
        ..FilterSpec::default()
    })
    .unwrap()
}

fn redacts(d: Detector, text: &str) -> String {
    redactor(d).check_input(text).unwrap().text.into_owned()
}

#[test]
fn each_detector_positive_and_negative() {
    let key = crate::key::ApiKey::generate();
    let key = key.expose();
    let mut bad_key = key.to_owned();
    bad_key.replace_range(10..11, if &key[10..11] == "a" { "b" } else { "a" });
    let cases: &[(Detector, &str, &str)] = &[
        (
            Detector::Email,
            "mail bob.smith+x@mail.example.com now",
            "bob at example dot com",
        ),
        (
            Detector::Phone,
            "call (555) 123-4567 or +1 555-123-4567",
            "version 5551234567x",
        ),
        (
            Detector::UsSsn,
            "ssn 123-45-6789.",
            "ssn 666-45-6789 or 123-00-6789",
        ),
        (
            Detector::PaymentCard,
            "card 4111 1111 1111 1111 ok",
            "order 4111 1111 1111 1112 ok",
        ),
        (
            Detector::PaymentCard,
            "card 5500-0000-0000-0004 ok",
            "id 1234567890123456",
        ),
        (
            Detector::Iban,
            "pay DE89 3704 0044 0532 0130 00 now",
            "ref DE89 3704 0044 0532 0130 01 now",
        ),
        (
            Detector::Ipv4,
            "host 192.168.1.20 up",
            "version 1.2.3 and 999.1.1.1",
        ),
        (
            Detector::Ipv6,
            "host fe80::1ff:fe23:4567:890a up",
            "at 12:30:45 today",
        ),
        (
            Detector::PrivateKey,
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
            "-----BEGIN PUBLIC KEY-----",
        ),
        (
            Detector::CloudKey,
            "aws AKIAIOSFODNN7EXAMPLE x",
            "AKIA short",
        ),
        (
            Detector::CloudKey,
            "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 x",
            "ghp_short",
        ),
        (
            Detector::CloudKey,
            "gcp AIzaSyA1234567890abcdefghijklmnopqrstuv x",
            "AIza-nope",
        ),
    ];
    for (d, positive, negative) in cases {
        let out = redacts(*d, positive);
        assert!(
            out.contains(&format!("[REDACTED:{}]", d.name())),
            "{d:?} missed in {positive:?}: {out}"
        );
        assert_eq!(redacts(*d, negative), *negative, "{d:?} false positive");
    }
    assert_eq!(
        redacts(Detector::AirlockKey, &format!("key {key} here")),
        "key [REDACTED:airlock_key] here"
    );
    assert_eq!(redacts(Detector::AirlockKey, &bad_key), bad_key);
}

#[test]
fn card_text_is_replaced_exactly() {
    assert_eq!(
        redacts(Detector::PaymentCard, "card 4111111111111111."),
        "card [REDACTED:payment_card]."
    );
}

fn spec(rules: Vec<RuleSpec>) -> FilterSet {
    FilterSet::compile(&FilterSpec {
        rules,
        max_input_bytes: 4096,
    })
    .unwrap()
}

fn rule(id: &str, action: Action, matcher: Matcher, ci: bool) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        action,
        matcher,
        case_insensitive: ci,
    }
}

fn mixed() -> FilterSet {
    spec(vec![
        rule(
            "no-secret",
            Action::Deny,
            Matcher::Literal("Project Zeus".into()),
            true,
        ),
        rule(
            "no-drop",
            Action::Deny,
            Matcher::Regex(r"DROP\s+TABLE".into()),
            false,
        ),
        rule(
            "email",
            Action::Redact,
            Matcher::Detector(Detector::Email),
            false,
        ),
        rule(
            "card",
            Action::Redact,
            Matcher::Detector(Detector::PaymentCard),
            false,
        ),
        rule(
            "ticket",
            Action::Redact,
            Matcher::Regex(r"TKT-\d{4}".into()),
            false,
        ),
    ])
}

#[test]
fn deny_names_the_rule_not_the_text() {
    let f = mixed();
    let err = f
        .check_input("tell me about project zeus please")
        .unwrap_err();
    assert_eq!(err.rule_id, "no-secret");
    assert_eq!(
        f.check_input("x; DROP  TABLE users").unwrap_err().rule_id,
        "no-drop"
    );
    assert!(
        f.check_input("x; drop table users").is_ok(),
        "case-sensitive rule"
    );
    let big = "a".repeat(5000);
    assert_eq!(f.check_input(&big).unwrap_err().rule_id, "input_too_large");
}

#[test]
fn redaction_counts_and_custom_labels() {
    let f = mixed();
    let out = f
        .check_input("a@b.example and c@d.example re TKT-1234")
        .unwrap();
    assert_eq!(
        out.text,
        "[REDACTED:email] and [REDACTED:email] re [REDACTED:ticket]"
    );
    assert_eq!(
        out.redactions,
        vec![("email".to_owned(), 2), ("ticket".to_owned(), 1)]
    );
}

#[test]
fn invalid_specs_refused() {
    let dup = vec![
        rule("a", Action::Deny, Matcher::Literal("x".into()), false),
        rule("a", Action::Deny, Matcher::Literal("y".into()), false),
    ];
    assert!(
        FilterSet::compile(&FilterSpec {
            rules: dup,
            ..FilterSpec::default()
        })
        .is_err()
    );
    let bad = vec![rule("a", Action::Deny, Matcher::Regex("(".into()), false)];
    assert!(
        FilterSet::compile(&FilterSpec {
            rules: bad,
            ..FilterSpec::default()
        })
        .is_err()
    );
}

fn stream(f: &FilterSet, chunks: &[&str]) -> (String, Option<String>) {
    let mut s = StreamFilter::new(f);
    let mut out = String::new();
    for c in chunks {
        out.push_str(&s.push(c));
    }
    if s.denied().is_none() {
        out.push_str(&s.finish());
    }
    (out, s.denied().map(str::to_owned))
}

fn every_split(f: &FilterSet, text: &str) {
    let whole = f.check_output(text);
    let boundaries: Vec<usize> = (0..=text.len())
        .filter(|i| text.is_char_boundary(*i))
        .collect();
    for &i in &boundaries {
        for &j in boundaries.iter().filter(|&&j| j >= i).step_by(7) {
            let got = stream(f, &[&text[..i], &text[i..j], &text[j..]]);
            assert_eq!(got, whole, "split at {i},{j}");
        }
    }
    // Token-sized pieces.
    let pieces: Vec<&str> = text.split_inclusive(' ').collect();
    assert_eq!(stream(f, &pieces), whole);
}

#[test]
fn split_across_chunks_matches_are_caught() {
    let f = mixed();
    let text = "Your card 4111 1111 1111 1111 is on file; mail ops@corp.example — ünïcode ok. TKT-0042 done.";
    let (out, denied) = f.check_output(text);
    assert_eq!(denied, None);
    assert!(out.contains("[REDACTED:payment_card]") && out.contains("[REDACTED:email]"));
    assert!(!out.contains("4111"));
    every_split(&f, text);
}

#[test]
fn deny_mid_stream_is_chunking_invariant() {
    let f = mixed();
    let prefix = "lorem ipsum dolor sit amet ".repeat(20);
    let text = format!("{prefix}card 4111111111111111 then PROJECT ZEUS leaks and more text");
    let (out, denied) = f.check_output(&text);
    assert_eq!(denied.as_deref(), Some("no-secret"));
    assert!(!out.to_lowercase().contains("zeus"));
    assert!(out.len() < text.len());
    every_split(&f, &text);
}

#[test]
fn long_clean_stream_releases_all_but_the_window() {
    let f = mixed();
    let mut s = StreamFilter::new(&f);
    let chunk = "word ".repeat(100);
    let first = s.push(&chunk);
    assert_eq!(first.len(), chunk.len() - HOLD_BACK);
    let rest = s.finish();
    assert_eq!(format!("{first}{rest}"), chunk);
}

/// The reproduced misses: a greedy candidate that swallows a neighbour fails its checksum
/// as a whole; the real number inside it must still be found.
const HIDDEN: [(&str, Detector, &str); 3] = [
    (
        "4111111111111111 12/25",
        Detector::PaymentCard,
        "[REDACTED:payment_card] 12/25",
    ),
    (
        "4111 1111 1111 1111 123",
        Detector::PaymentCard,
        "[REDACTED:payment_card] 123",
    ),
    (
        "DE89 3704 0044 0532 0130 00 EUR",
        Detector::Iban,
        "[REDACTED:iban] EUR",
    ),
];

fn detector_rules(action: Action) -> FilterSet {
    spec(vec![
        rule(
            "cards",
            action,
            Matcher::Detector(Detector::PaymentCard),
            false,
        ),
        rule("ibans", action, Matcher::Detector(Detector::Iban), false),
    ])
}

#[test]
fn numbers_inside_longer_runs_are_redacted_in_prompts_and_outputs() {
    let f = detector_rules(Action::Redact);
    for (text, detector, want) in HIDDEN {
        assert_eq!(redacts(detector, text), want, "{text}");
        let framed = format!("pay with {text} today");
        let want = format!("pay with {want} today");
        assert_eq!(f.check_input(&framed).unwrap().text, want, "prompt: {text}");
        assert_eq!(
            f.check_output(&framed),
            (want.clone(), None),
            "output: {text}"
        );
        let pieces: Vec<&str> = framed.split_inclusive(' ').collect();
        assert_eq!(stream(&f, &pieces), (want, None), "stream: {text}");
        every_split(&f, &framed);
    }
}

#[test]
fn numbers_inside_longer_runs_trip_deny_rules_in_prompts_and_outputs() {
    let f = detector_rules(Action::Deny);
    for (text, detector, _) in HIDDEN {
        let id = if detector == Detector::Iban {
            "ibans"
        } else {
            "cards"
        };
        let framed = format!("pay with {text} today");
        assert_eq!(
            f.check_input(&framed).unwrap_err().rule_id,
            id,
            "prompt: {text}"
        );
        let (out, denied) = f.check_output(&framed);
        assert_eq!(denied.as_deref(), Some(id), "output: {text}");
        assert!(!out.contains("1111") && !out.contains("3704"), "{out}");
        let pieces: Vec<&str> = framed.split_inclusive(' ').collect();
        assert_eq!(stream(&f, &pieces).1.as_deref(), Some(id), "stream: {text}");
        every_split(&f, &framed);
    }
}

#[test]
fn windows_end_only_at_group_boundaries() {
    // A valid card glued to more digits or letters is not a card; grouped runs are tested
    // from every group on, so a card after a leading group is found.
    assert_eq!(
        redacts(Detector::PaymentCard, "id 41111111111111119"),
        "id 41111111111111119"
    );
    assert_eq!(
        redacts(Detector::PaymentCard, "x 4111111111111111abc"),
        "x 4111111111111111abc"
    );
    assert_eq!(
        redacts(Detector::PaymentCard, "ref 12 4111 1111 1111 1111"),
        "ref 12 [REDACTED:payment_card]"
    );
    assert_eq!(
        redacts(Detector::Iban, "DE89370400440532013000XY"),
        "DE89370400440532013000XY"
    );
}
