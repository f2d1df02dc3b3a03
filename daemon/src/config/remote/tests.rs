//! `backend = "remote"` and `[listener] role = "engine"`: defaults, and every refusal by key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::{Config, ListenerMode, ModelBackend, Role};
use super::{Balance, UpstreamAddr};

const LISTENER: &str = r#"
[listener]
address = "127.0.0.1:8443"

[listener.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
"#;

const POOL: &str = r#"
[[models]]
name = "llama"
backend = "remote"
upstreams = ["https://engine-1.example:8443", "https://[fd00::2]", "unix:run/vllm.sock"]
ca = "engines-ca.pem"
client_cert = "gw.pem"
client_key = "gw.key"
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

fn pool(extra: &str) -> String {
    format!("{LISTENER}{POOL}{extra}\n")
}

#[test]
fn a_remote_pool_gets_defaults_and_resolved_paths() {
    let config = parse(&pool("")).unwrap();
    let ModelBackend::Remote(remote) = &config.models[0].backend else {
        panic!("remote backend")
    };
    assert!(!config.models[0].backend.is_local());
    assert_eq!(
        remote.upstreams,
        vec![
            UpstreamAddr::Https {
                host: "engine-1.example".into(),
                port: 8443
            },
            UpstreamAddr::Https {
                host: "fd00::2".into(),
                port: 443
            },
            UpstreamAddr::Unix(PathBuf::from("/etc/airlock/run/vllm.sock")),
        ]
    );
    assert_eq!(remote.upstream_model, "llama");
    let tls = remote.tls.as_ref().unwrap();
    assert_eq!(tls.ca, Path::new("/etc/airlock/engines-ca.pem"));
    assert_eq!(tls.client.1, Path::new("/etc/airlock/gw.key"));
    assert_eq!(remote.balance, Balance::LeastOutstanding);
    assert_eq!(remote.health_path, "/v1/models");
    assert_eq!(remote.health_interval, Duration::from_secs(5));
    assert_eq!(remote.eject_after.get(), 3);
    assert_eq!(remote.connect_timeout, Duration::from_secs(2));
    assert_eq!(remote.first_byte_timeout, Duration::from_secs(60));
    assert_eq!(remote.max_response_bytes.get(), 16 << 20);
    assert_eq!(remote.keepalive_connections, 32);
    assert_eq!(remote.keepalive_timeout, Duration::from_secs(4));
    assert_eq!(config.listener.role, Role::Gateway);

    let config = parse(&pool(
        "balance = \"prefix_affinity\"\naffinity_prefix_bytes = 2048\nupstream_model = \"meta/llama\"\nidle_timeout = \"5s\"\nkeepalive_connections = 0\nkeepalive_timeout = \"30s\"",
    ))
    .unwrap();
    let ModelBackend::Remote(remote) = &config.models[0].backend else {
        panic!("remote backend")
    };
    assert_eq!(
        remote.balance,
        Balance::PrefixAffinity {
            prefix_bytes: std::num::NonZeroUsize::new(2048).unwrap()
        }
    );
    assert_eq!(remote.upstream_model, "meta/llama");
    assert_eq!(remote.idle_timeout, Duration::from_secs(5));
    assert_eq!(
        remote.keepalive_connections, 0,
        "0: a connection per request"
    );
    assert_eq!(remote.keepalive_timeout, Duration::from_secs(30));
}

#[test]
fn a_remote_pool_sits_beside_a_local_model() {
    let text = format!("{LISTENER}[[models]]\nname = \"local\"\nbackend = \"test\"\n{POOL}");
    let config = parse(&text).unwrap();
    assert_eq!(config.models.len(), 2);
}

#[test]
fn remote_pool_refusals_name_the_key() {
    let unix_only = format!(
        "{LISTENER}[[models]]\nname = \"m\"\nbackend = \"remote\"\nupstreams = [\"unix:/run/a.sock\"]\n"
    );
    assert!(
        parse(&unix_only).is_ok(),
        "a Unix socket needs no TLS material"
    );
    let cases: &[(&str, &str, &str)] = &[
        (
            &POOL.replace("upstreams = [", "upstreams = [\"http://plain:80\", "),
            "models[0].upstreams[0]",
            "https://host:port",
        ),
        (
            &POOL.replace(
                "upstreams = [",
                "upstreams = [\"https://engine-1.example:8443\", ",
            ),
            "models[0].upstreams[1]",
            "listed twice",
        ),
        (
            &POOL.replace("upstreams = [", "upstreams = [\"https://h:0\", "),
            "models[0].upstreams[0]",
            "not",
        ),
        (
            &POOL.replace("upstreams = [", "upstreams = [\"https://u@h:1\", "),
            "models[0].upstreams[0]",
            "not",
        ),
        (
            &POOL.replace("ca = \"engines-ca.pem\"\n", ""),
            "models[0].ca",
            "required",
        ),
        (
            &POOL.replace("client_key = \"gw.key\"\n", ""),
            "models[0].client_cert",
            "go together",
        ),
        (
            &POOL.replace("client_cert = \"gw.pem\"\nclient_key = \"gw.key\"\n", ""),
            "models[0].client_cert",
            "required",
        ),
        (
            &format!("{POOL}path = \"/srv/m\"\n"),
            "models[0].path",
            "not used with backend = \"remote\"",
        ),
        (
            &format!("{POOL}max_active = 4\n"),
            "models[0].max_active",
            "not used",
        ),
        (
            &format!("{POOL}balance = \"random\"\n"),
            "models[0].balance",
            "least_outstanding",
        ),
        (
            &format!("{POOL}affinity_prefix_bytes = 64\n"),
            "models[0].affinity_prefix_bytes",
            "prefix_affinity",
        ),
        (
            &format!("{POOL}health_path = \"health\"\n"),
            "models[0].health_path",
            "absolute",
        ),
        (
            &format!("{POOL}health_interval = \"0s\"\n"),
            "models[0].health_interval",
            "greater than zero",
        ),
        (
            &format!("{POOL}eject_after = 0\n"),
            "models[0].eject_after",
            "between",
        ),
        (
            &format!("{POOL}max_response_bytes = 0\n"),
            "models[0].max_response_bytes",
            "at least 1",
        ),
        (
            &format!("{POOL}keepalive_connections = 1025\n"),
            "models[0].keepalive_connections",
            "between 0 and 1024",
        ),
        (
            &format!("{POOL}keepalive_timeout = \"0s\"\n"),
            "models[0].keepalive_timeout",
            "greater than zero",
        ),
        (
            "[[models]]\nname = \"m\"\nbackend = \"test\"\nkeepalive_connections = 4\n",
            "models[0].keepalive_connections",
            "only used with backend = \"remote\"",
        ),
        (
            &format!("{POOL}server_name = \"not a name\"\n"),
            "models[0].server_name",
            "not a DNS name",
        ),
        (
            &format!("{POOL}upstream_model = \"\"\n"),
            "models[0].upstream_model",
            "1 to 256",
        ),
        (
            "[[models]]\nname = \"m\"\nbackend = \"remote\"\n",
            "models[0].upstreams",
            "required",
        ),
        (
            "[[models]]\nname = \"m\"\nbackend = \"remote\"\nupstreams = [\"unix:/a\"]\nca = \"ca.pem\"\n",
            "models[0].ca",
            "only used with https://",
        ),
        (
            "[[models]]\nname = \"m\"\nbackend = \"test\"\nupstreams = [\"unix:/a\"]\n",
            "models[0].upstreams",
            "only used with backend = \"remote\"",
        ),
        (
            "[[models]]\nname = \"m\"\npath = \"/srv/m\"\nidle_timeout = \"1s\"\n",
            "models[0].idle_timeout",
            "not \"burn\"",
        ),
        (
            "[[models]]\nname = \"m\"\nbackend = \"gpu\"\n",
            "models[0].backend",
            "\"remote\"",
        ),
    ];
    for (models, path, needle) in cases {
        let (got, reason) = err(&format!("{LISTENER}{models}"));
        assert_eq!(got, *path, "{models}: {reason}");
        assert!(reason.contains(needle), "{path}: {reason}");
    }
}

const ENGINE: &str = r#"
[listener]
address = "127.0.0.1:8443"
role = "engine"

[listener.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"

[listener.engine]
cert_cn = ["gateway-1", "gateway-2"]

[[models]]
name = "m"
backend = "test"
"#;

#[test]
fn the_engine_role_admits_only_the_named_gateways() {
    let config = parse(ENGINE).unwrap();
    assert_eq!(config.listener.role, Role::Engine);
    assert!(matches!(config.listener.mode, ListenerMode::Tls(_)));
    let policy = &config.policy;
    assert_eq!(
        policy.cert_tenants,
        crate::config::policy::CertTenants::Rules
    );
    assert!(policy.key_db.is_none() && policy.jwt.is_none());
    let gateway = policy.tenants.get("gateway").expect("the one tenant");
    assert!(gateway.require_cert);
    assert!(gateway.allows_model("m"));
}

#[test]
fn engine_role_refusals_name_the_key() {
    let cases: &[(String, &str, &str)] = &[
        (
            ENGINE.replace("role = \"engine\"", "role = \"worker\""),
            "listener.role",
            "\"gateway\", \"engine\"",
        ),
        (
            ENGINE.replace("cert_cn = [\"gateway-1\", \"gateway-2\"]", ""),
            "listener.engine",
            "required",
        ),
        (
            ENGINE.replace(
                "[listener.engine]\ncert_cn = [\"gateway-1\", \"gateway-2\"]",
                "",
            ),
            "listener.engine",
            "required",
        ),
        (
            ENGINE.replace("role = \"engine\"\n", ""),
            "listener.engine",
            "only allowed with listener.role",
        ),
        (
            ENGINE.replace("client_ca = \"ca.pem\"", "danger_no_client_auth = true"),
            "listener.role",
            "client certificates",
        ),
        (
            format!("{ENGINE}\n[[tenants]]\nname = \"t\"\n"),
            "tenants",
            "not used",
        ),
        (
            format!("{ENGINE}\n[auth]\nkey_db = \"keys.db\"\n"),
            "auth",
            "not used",
        ),
        (
            ENGINE.replace("cert_cn = [", "cert_sha256 = [\"zz\"]\ncert_cn = ["),
            "listener.engine.cert_sha256",
            "fingerprints",
        ),
        (
            format!(
                "{ENGINE}[[models]]\nname = \"r\"\nbackend = \"remote\"\nupstreams = [\"unix:/a\"]\n"
            ),
            "models[1].backend",
            "not served by listener.role = \"engine\"",
        ),
    ];
    for (text, path, needle) in cases {
        let (got, reason) = err(text);
        assert_eq!(got, *path, "{reason}");
        assert!(reason.contains(needle), "{path}: {reason}");
    }
}
