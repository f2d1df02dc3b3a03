use super::*;

#[test]
fn generated_keys_parse_and_differ() {
    let a = ApiKey::generate();
    let b = ApiKey::generate();
    assert_eq!(a.expose().len(), KEY_LEN);
    assert!(a.expose().starts_with("alk_"));
    let parsed = ApiKey::parse(a.expose()).unwrap();
    assert_eq!(parsed.id(), a.id());
    assert_ne!(a.expose(), b.expose());
    assert_ne!(a.id(), b.id());
}

#[test]
fn any_single_character_typo_fails_the_checksum() {
    let key = ApiKey::generate();
    let s = key.expose().to_owned();
    for i in PREFIX.len()..s.len() {
        if i == PREFIX.len() + ID_LEN {
            continue;
        }
        let mut bytes = s.clone().into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            ApiKey::parse(&typo).unwrap_err(),
            PolicyError::MalformedKey,
            "typo at {i}"
        );
    }
}

#[test]
fn wrong_prefix_length_or_alphabet_rejected() {
    let s = ApiKey::generate().expose().to_owned();
    for bad in [
        "",
        "alk_",
        &s[..s.len() - 1],
        &format!("{s}x"),
        &s.replacen("alk_", "sk-_", 1),
        &format!("alk_{}", "-".repeat(KEY_LEN - 4)),
    ] {
        assert_eq!(ApiKey::parse(bad).unwrap_err(), PolicyError::MalformedKey);
    }
}

#[test]
fn debug_never_shows_the_secret() {
    let key = ApiKey::generate();
    let dbg = format!("{key:?}");
    assert!(!dbg.contains(key.expose()));
    assert!(dbg.contains(key.id().as_str()));
}

#[test]
fn error_message_never_echoes_input() {
    let s = ApiKey::generate().expose().to_owned();
    let err = ApiKey::parse(&s[..40]).unwrap_err();
    assert!(!err.to_string().contains(&s[..40]));
}

#[test]
fn record_usable_and_binding() {
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
    let mut rec = KeyRecord {
        id: KeyId::parse("ABCDEFGHIJKL").unwrap(),
        tenant: "t".into(),
        phc: String::new(),
        created_at: now,
        expires_at: Some(now + std::time::Duration::from_secs(10)),
        bound_cert_sha256: Some("ab".into()),
        revoked: false,
    };
    assert!(rec.usable(now));
    assert!(!rec.usable(now + std::time::Duration::from_secs(10)));
    assert!(rec.check_binding(Some("AB")).is_ok());
    assert_eq!(
        rec.check_binding(None).unwrap_err(),
        PolicyError::CertificateMismatch
    );
    assert!(rec.check_binding(Some("cd")).is_err());
    rec.revoked = true;
    assert!(!rec.usable(now));
}
