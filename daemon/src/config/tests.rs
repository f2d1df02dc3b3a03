use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[listener]
address = "127.0.0.1:8443"

[listener.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
crls = ["crl.pem"]

[[models]]
name = "m"
backend = "test"
"#;

fn parse(text: &str) -> Result<Config, (String, String)> {
    Config::parse(text, Path::new("/etc/airlock")).map_err(|e| (e.path, e.reason))
}

fn err(text: &str) -> (String, String) {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths() {
    let config = parse(MINIMAL).unwrap();
    let ListenerMode::Tls(tls) = &config.listener.mode else {
        panic!("tls mode")
    };
    assert_eq!(tls.cert, Path::new("/etc/airlock/server.pem"));
    assert_eq!(tls.crls, vec![PathBuf::from("/etc/airlock/crl.pem")]);
    assert_eq!(config.listener.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.logging, LoggingConfig::default());
    assert_eq!(
        config.models[0].backend,
        ModelBackend::Test {
            token_delay: Duration::ZERO
        }
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let (path, reason) =
        err(&MINIMAL.replace("crls = [\"crl.pem\"]", "crls = [\"crl.pem\"]\nbogus = 1"));
    assert_eq!(path, "listener.tls.bogus");
    assert!(reason.contains("unknown field `bogus`"), "{reason}");

    let (path, _) = err(&format!("{MINIMAL}\n[tenants]\nx = 1\n"));
    assert_eq!(path, "tenants");

    let (path, _) = err(&format!(
        "{MINIMAL}\n[[models]]\nname = \"n\"\nbackend = \"test\"\ncolour = \"red\"\n"
    ));
    assert_eq!(path, "models[1].colour");
}

#[test]
fn type_errors_name_the_key() {
    let (path, reason) = err(&format!(
        "{MINIMAL}\n[limits]\nmax_connections = \"many\"\n"
    ));
    assert_eq!(path, "limits.max_connections");
    assert!(reason.contains("invalid type"), "{reason}");
}

#[test]
fn missing_keys_name_the_key() {
    let (path, reason) = err(&MINIMAL.replace("cert = \"server.pem\"\n", ""));
    assert_eq!(path, "listener.tls.cert");
    assert_eq!(reason, "required key is missing");
}

#[test]
fn manifest_pins_are_normalized() {
    let pin = "AB".repeat(32);
    let text = MINIMAL.replace(
        "backend = \"test\"",
        &format!("path = \"/m\"\nmanifest_sha256 = \"{pin}\""),
    );
    let config = parse(&text).unwrap();
    let ModelBackend::Burn {
        manifest_sha256, ..
    } = &config.models[0].backend
    else {
        panic!("burn model")
    };
    assert_eq!(manifest_sha256.as_deref(), Some("ab".repeat(32).as_str()));
}

#[test]
fn embedding_settings() {
    let text = MINIMAL.replace("backend = \"test\"", "path = \"/m\"\npooling = \"mean\"");
    let config = parse(&text).unwrap();
    let ModelBackend::Burn {
        pooling,
        embeddings,
        ..
    } = &config.models[0].backend
    else {
        panic!("burn model")
    };
    assert_eq!(
        (*pooling, *embeddings),
        (Some(airlock_engine::Pooling::Mean), None)
    );
    for (line, key) in [
        ("path = \"/m\"\npooling = \"max\"", "models[0].pooling"),
        (
            "path = \"/m\"\nembeddings = false\npooling = \"last\"",
            "models[0].pooling",
        ),
        (
            "backend = \"test\"\nembeddings = true",
            "models[0].embeddings",
        ),
    ] {
        let (got, reason) = parse(&MINIMAL.replace("backend = \"test\"", line)).unwrap_err();
        assert_eq!(got, key, "{line}: {reason}");
    }
}

#[test]
fn speculative_settings() {
    let burn =
        |extra: &str| MINIMAL.replace("backend = \"test\"", &format!("path = \"/m\"{extra}"));
    let spec_of = |text: &str| {
        let config = parse(text).unwrap();
        let ModelBackend::Burn { speculative, .. } = &config.models[0].backend else {
            panic!("burn model")
        };
        *speculative
    };
    assert_eq!(spec_of(&burn("")), None, "off by default");
    assert_eq!(
        spec_of(&burn("\nspeculative = { method = \"ngram\" }")),
        Some(airlock_engine::Speculative::default())
    );
    assert_eq!(
        spec_of(&burn(
            "\nspeculative = { method = \"ngram\", max_draft = 8, min_ngram = 2, max_ngram = 2 }"
        )),
        Some(airlock_engine::Speculative {
            max_draft: 8,
            min_ngram: 2,
            max_ngram: 2
        })
    );
    for (line, key) in [
        (
            "\nspeculative = { method = \"draft\" }",
            "models[0].speculative.method",
        ),
        (
            "\nspeculative = { method = \"ngram\", max_draft = 0 }",
            "models[0].speculative.max_draft",
        ),
        (
            "\nspeculative = { method = \"ngram\", min_ngram = 4 }",
            "models[0].speculative.min_ngram",
        ),
        (
            "\nspeculative = { method = \"ngram\", max_ngram = 17 }",
            "models[0].speculative.max_ngram",
        ),
        (
            "\nspeculative = { max_draft = 4 }",
            "models[0].speculative.method",
        ),
    ] {
        let (got, reason) = parse(&burn(line)).unwrap_err();
        assert_eq!(got, key, "{line}: {reason}");
    }
    let (got, _) = parse(&MINIMAL.replace(
        "backend = \"test\"",
        "backend = \"test\"\nspeculative = { method = \"ngram\" }",
    ))
    .unwrap_err();
    assert_eq!(got, "models[0].speculative");
}

#[test]
fn validation_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "address = \"127.0.0.1:8443\"",
            "address = \"localhost\"",
            "listener.address",
        ),
        ("client_ca = \"ca.pem\"\n", "", "listener.tls.client_ca"),
        (
            "[listener]\n",
            "[listener]\nhandshake_timeout = \"10\"\n",
            "listener.handshake_timeout",
        ),
        (
            "[listener]\n",
            "[listener]\nmode = \"plain\"\n",
            "listener.mode",
        ),
        (
            "backend = \"test\"",
            "backend = \"onnx\"",
            "models[0].backend",
        ),
        (
            "backend = \"test\"",
            "backend = \"test\"\npath = \"/m\"",
            "models[0].path",
        ),
        (
            "backend = \"test\"",
            "path = \"/m\"\ndevice = \"tpu\"",
            "models[0].device",
        ),
        (
            "backend = \"test\"",
            "path = \"/m\"\nmax_active = 0",
            "models[0].max_active",
        ),
        (
            "backend = \"test\"",
            "path = \"/m\"\nquantize = \"q3\"",
            "models[0].quantize",
        ),
        (
            "backend = \"test\"",
            "backend = \"test\"\nquantize = \"q8\"",
            "models[0].quantize",
        ),
        (
            "backend = \"test\"",
            "path = \"/m\"\nkv_cache_dtype = \"bf16\"",
            "models[0].kv_cache_dtype",
        ),
        (
            "backend = \"test\"",
            "backend = \"test\"\nkv_cache_dtype = \"f32\"",
            "models[0].kv_cache_dtype",
        ),
        ("name = \"m\"", "name = \"two words\"", "models[0].name"),
        (
            "backend = \"test\"",
            "path = \"/m\"\nmanifest_sha256 = \"abc\"",
            "models[0].manifest_sha256",
        ),
        (
            "backend = \"test\"",
            "path = \"/m\"\nverify = false\nmanifest_sha256 = \"{PIN}\"",
            "models[0].manifest_sha256",
        ),
        (
            "backend = \"test\"",
            "backend = \"test\"\nmanifest_sha256 = \"{PIN}\"",
            "models[0].manifest_sha256",
        ),
    ];
    for (from, to, want) in cases {
        let text = MINIMAL.replace(from, &to.replace("{PIN}", &"ab".repeat(32)));
        assert_ne!(text, MINIMAL, "case {want} did not apply");
        let (path, reason) = err(&text);
        assert_eq!(&path, want, "{reason}");
    }
    let (path, _) = err(&format!("{MINIMAL}\n[limits]\nmax_header_bytes = 100\n"));
    assert_eq!(path, "limits.max_header_bytes");
    let (path, _) = err(&format!("{MINIMAL}\n[logging]\nformat = \"xml\"\n"));
    assert_eq!(path, "logging.format");
    let (path, _) = err(&format!(
        "{MINIMAL}\n[[models]]\nname = \"m\"\nbackend = \"test\"\n"
    ));
    assert_eq!(path, "models[1].name");
    let (path, _) = err(&format!(
        "{MINIMAL}\n[[models]]\nname = \"n\"\npath = \"/m\"\n"
    ));
    assert_eq!(path, "models[1].backend");
    let (path, _) = err(&MINIMAL.replace("[[models]]\nname = \"m\"\nbackend = \"test\"\n", ""));
    assert_eq!(path, "models");
}

const PROXY: &str = r#"
[listener]
mode = "proxy"
address = "127.0.0.1:8080"

[listener.proxy]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "unix"]

[[models]]
name = "m"
backend = "test"
"#;

#[test]
fn proxy_mode() {
    let config = parse(PROXY).unwrap();
    let ListenerMode::Proxy(proxy) = &config.listener.mode else {
        panic!("proxy mode")
    };
    assert_eq!(proxy.trusted_proxies.len(), 2);
    assert!(proxy.trust_unix_peers);
    assert_eq!(proxy.client_cert_header.as_str(), "x-forwarded-client-cert");
    assert_eq!(proxy.client_cert_format, ClientCertFormat::Xfcc);
    assert!(config.warnings().iter().any(|w| w.contains("plain HTTP")));

    let nginx = PROXY.replace(
        "\"unix\"]",
        "\"unix\"]\nclient_cert_header = \"X-Client-Cert\"",
    );
    let ListenerMode::Proxy(proxy) = parse(&nginx).unwrap().listener.mode else {
        panic!()
    };
    assert_eq!(proxy.client_cert_header.as_str(), "x-client-cert");
    assert_eq!(proxy.client_cert_format, ClientCertFormat::EscapedPem);

    let unix = PROXY.replace("127.0.0.1:8080", "unix:/run/airlockd.sock");
    assert_eq!(
        parse(&unix).unwrap().listener.address,
        ListenAddress::Unix("/run/airlockd.sock".into())
    );
}

#[test]
fn proxy_mode_refuses_non_loopback_unless_dangerous() {
    let public = PROXY.replace("127.0.0.1:8080", "0.0.0.0:8080");
    assert_eq!(err(&public).0, "listener.address");
    let allowed = public.replace(
        "\"unix\"]",
        "\"unix\"]\ndanger_allow_non_loopback_proxy = true",
    );
    let config = parse(&allowed).unwrap();
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("danger_allow_non_loopback_proxy"))
    );

    let (path, _) = err(&PROXY.replace("\"unix\"]", "\"unix\", \"not-an-ip\"]"));
    assert_eq!(path, "listener.proxy.trusted_proxies[3]");
    let (path, _) = err(&PROXY.replace(
        "[listener.proxy]",
        "[listener.tls]\ncert = \"a\"\nkey = \"b\"\n[listener.proxy]",
    ));
    assert_eq!(path, "listener.tls");
}

#[test]
fn danger_no_client_auth_warns() {
    let text = MINIMAL.replace(
        "client_ca = \"ca.pem\"\ncrls = [\"crl.pem\"]",
        "danger_no_client_auth = true",
    );
    let config = parse(&text).unwrap();
    assert!(config.warnings().iter().any(|w| w.contains("NOT verified")));
}

#[test]
fn load_reports_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlockd.toml");
    std::fs::write(&file, MINIMAL.replace("\"127.0.0.1:8443\"", "\"nope\"")).unwrap();
    let e = Config::load(&file).unwrap_err();
    let line = e.to_string();
    assert!(
        line.starts_with(&format!("{}: listener.address: ", file.display())),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");

    std::fs::write(&file, "[listener\n").unwrap();
    let line = Config::load(&file).unwrap_err().to_string();
    assert!(line.starts_with(&format!("{}: ", file.display())), "{line}");
}

/// `load_for_serve` builds the TLS state and names the key of the file that failed.
#[test]
fn load_for_serve_names_the_tls_file_key() {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::init(dir.path(), &[]).unwrap();
    crate::audit::keys::keygen(dir.path()).unwrap();
    std::fs::write(dir.path().join("crl.pem"), "not a crl").unwrap();
    let file = dir.path().join("airlockd.toml");
    std::fs::write(
        &file,
        "[listener]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\ncrls = [\"crl.pem\"]\n[[models]]\nname = \"m\"\nbackend = \"test\"\n\
         [audit]\ndb = \"audit.db\"\nsigning_key = \"audit-signing.key\"\n\
         digest_key = \"audit-digest.key\"\n",
    )
    .unwrap();
    Config::load(&file).unwrap();
    let e = Config::load_for_serve(&file).unwrap_err();
    assert_eq!(e.path, "listener.tls.crls[0]", "{e}");

    crate::certs::init(dir.path(), &[]).unwrap();
    std::fs::remove_file(dir.path().join("crl.pem")).unwrap();
    crate::certs::init(dir.path(), &[]).unwrap();
    Config::load_for_serve(&file).unwrap();
    std::fs::write(dir.path().join("server.key"), "garbage").unwrap();
    let e = Config::load_for_serve(&file).unwrap_err();
    assert_eq!(e.path, "listener.tls.key", "{e}");
    assert!(!e.to_string().contains("garbage"), "{e}");
}

/// `check-config` reads the shared limits store's TLS files as `serve` would: a missing CA
/// or a client key that is no key is refused naming its key, never quoting the file.
#[test]
fn load_for_serve_checks_the_store_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::init(dir.path(), &[]).unwrap();
    crate::audit::keys::keygen(dir.path()).unwrap();
    let file = dir.path().join("airlockd.toml");
    std::fs::write(
        &file,
        "[listener]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\n[[models]]\nname = \"m\"\nbackend = \"test\"\n\
         [audit]\ndb = \"audit.db\"\nsigning_key = \"audit-signing.key\"\n\
         digest_key = \"audit-digest.key\"\n\
         [cluster.limits]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:6380\"\n\
         ca = \"redis-ca.pem\"\nclient_cert = \"server.pem\"\nclient_key = \"redis.key\"\n",
    )
    .unwrap();
    let e = Config::load_for_serve(&file).unwrap_err();
    assert_eq!(e.path, "cluster.limits.ca", "{e}");
    std::fs::copy(dir.path().join("ca.pem"), dir.path().join("redis-ca.pem")).unwrap();
    std::fs::write(dir.path().join("redis.key"), "secret-looking garbage").unwrap();
    let e = Config::load_for_serve(&file).unwrap_err();
    assert_eq!(e.path, "cluster.limits.client_key", "{e}");
    assert!(!e.to_string().contains("garbage"), "{e}");
    std::fs::copy(dir.path().join("server.key"), dir.path().join("redis.key")).unwrap();
    Config::load_for_serve(&file).unwrap();
}

/// Serving without `[audit]` is refused by config validation (closed by default).
#[test]
fn load_for_serve_requires_audit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlockd.toml");
    let text = MINIMAL.replace(
        "client_ca = \"ca.pem\"\ncrls = [\"crl.pem\"]",
        "danger_no_client_auth = true",
    );
    std::fs::write(&file, text).unwrap();
    crate::certs::init(dir.path(), &[]).unwrap();
    Config::load(&file).unwrap();
    let e = Config::load_for_serve(&file).unwrap_err();
    assert_eq!(e.path, "audit", "{e}");
    assert!(e.reason.starts_with("required: "), "{e}");
}

#[test]
fn engine_scheduling_keys() {
    let c = parse(MINIMAL).expect("minimal config parses");
    let m = &c.models[0];
    assert_eq!(
        (m.prefill_chunk.get(), m.max_batch_tokens.get()),
        (256, 512)
    );
    assert_eq!(m.kv_cache_bytes, None);
    for (written, bytes) in [
        ("1048576", 1 << 20),
        ("\"512MiB\"", 512 << 20),
        ("\"2GiB\"", 2 << 30),
        ("\"64 KiB\"", 64 << 10),
    ] {
        let text = MINIMAL.replace(
            "backend = \"test\"",
            &format!("backend = \"test\"\nkv_cache = {written}\nprefill_chunk = 32"),
        );
        let c = parse(&text).expect("kv_cache parses");
        assert_eq!(c.models[0].kv_cache_bytes.map(|b| b.get()), Some(bytes));
        assert_eq!(c.models[0].prefill_chunk.get(), 32);
    }
    for bad in ["\"2GB\"", "\"lots\"", "0"] {
        let text = MINIMAL.replace(
            "backend = \"test\"",
            &format!("backend = \"test\"\nkv_cache = {bad}"),
        );
        let (path, reason) = err(&text);
        assert_eq!(path, "models[0].kv_cache", "{bad}: {reason}");
    }
    let (path, _) = err(&MINIMAL.replace(
        "backend = \"test\"",
        "backend = \"test\"\nmax_batch_tokens = 0",
    ));
    assert_eq!(path, "models[0].max_batch_tokens");
}

#[test]
fn test_backend_is_refused_without_the_test_engine_feature() {
    // This test build has the feature (tests run on the test engine); the release build
    // does not, and takes the `false` branch at validation.
    assert!(test_engine_built(true).is_ok());
    let Invalid { path, reason } = test_engine_built(false).unwrap_err();
    assert_eq!(path, "backend");
    assert!(reason.contains("`test-engine`"), "{reason}");
    assert!(reason.contains("backend = \"burn\""), "{reason}");
    // ...and with the feature the same file is accepted (MINIMAL uses backend = "test").
    assert!(parse(MINIMAL).is_ok());
}
