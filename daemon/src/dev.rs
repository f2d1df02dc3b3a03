//! `airlockd dev`: everything needed to try the gateway in one command, like
//! `vault server -dev`. Creates (or reuses) a dev PKI with tenant `demo`, writes a config,
//! installs the built-in model, and prints a ready-to-paste curl command and an OpenAI Python
//! SDK snippet (an `ssl.SSLContext` with the client certificate, passed to httpx as `verify`:
//! httpx 0.28 ignores the older `cert=` argument).

use std::path::{Path, PathBuf};

use crate::certs;

/// Why the dev environment could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certs(#[from] certs::CertsError),
    #[error("installing the built-in model: {0}")]
    Model(#[from] airlock_engine::EngineError),
    #[error("audit keys: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// The tenant `dev` issues a client certificate for.
pub const DEV_TENANT: &str = "demo";
/// The model name `dev` serves.
pub const DEV_MODEL: &str = airlock_engine::default_model::NAME;

/// Prepares `dir` and returns the config file path.
pub fn prepare(dir: &Path, port: u16) -> Result<PathBuf, DevError> {
    std::fs::create_dir_all(dir).map_err(|source| DevError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| DevError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let pki = dir.join("certs");
    certs::init(&pki, &[DEV_TENANT.to_owned()])?;
    let model_dir = airlock_engine::default_model::install(&dir.join("model"))?;
    // The audit log is not optional, in dev mode either: keys are created once and kept.
    let audit = dir.join("audit");
    crate::audit::keys::keygen(&audit)?;
    let config = dir.join("airlockd.toml");
    let text = config_text(&pki, &model_dir, &audit, port);
    std::fs::write(&config, text).map_err(|source| DevError::Io {
        path: config.clone(),
        source,
    })?;
    Ok(config)
}

fn config_text(pki: &Path, model: &Path, audit: &Path, port: u16) -> String {
    let p = |name: &str| toml_string(&pki.join(name));
    let a = |name: &str| toml_string(&audit.join(name));
    format!(
        "# Written by `airlockd dev`; rewritten on every run. See docs/config.md.\n\
         [listener]\n\
         address = \"127.0.0.1:{port}\"\n\n\
         [listener.tls]\n\
         cert = {cert}\n\
         key = {key}\n\
         client_ca = {ca}\n\
         crls = [{crl}]\n\n\
         [[models]]\n\
         name = \"{DEV_MODEL}\"\n\
         path = {model}\n\
         # The built-in model is tiny: the CPU backend is fast enough and probes no GPU.\n\
         device = \"cpu\"\n\n\
         # Every request is recorded; verify with\n\
         # airlockd audit verify --db {audit_db} --pubkey {audit_pub}\n\
         [audit]\n\
         db = {audit_db}\n\
         signing_key = {audit_key}\n\
         digest_key = {digest_key}\n",
        cert = p(certs::SERVER_CERT),
        key = p(certs::SERVER_KEY),
        ca = p(certs::CA_CERT),
        crl = p(certs::CRL),
        model = toml_string(model),
        audit_db = a("audit.db"),
        audit_pub = a(crate::audit::keys::PUBLIC_KEY_FILE),
        audit_key = a(crate::audit::keys::SIGNING_KEY_FILE),
        digest_key = a(crate::audit::keys::DIGEST_KEY_FILE),
    )
}

/// A TOML basic string for a path.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The quick-start text printed once the daemon listens on `port`.
pub fn instructions(dir: &Path, port: u16) -> String {
    let pki = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .join("certs");
    let (cert, key) = certs::client_paths(&pki, DEV_TENANT);
    let ca = pki.join(certs::CA_CERT);
    let (cert, key, ca) = (cert.display(), key.display(), ca.display());
    format!(
        r#"
airlockd dev is serving {DEV_MODEL} on https://127.0.0.1:{port} (mutual TLS, tenant "{DEV_TENANT}").

Try it with curl:

  curl --cert {cert} --key {key} --cacert {ca} \
    https://localhost:{port}/v1/chat/completions \
    -H 'content-type: application/json' \
    -d '{{"model":"{DEV_MODEL}","messages":[{{"role":"user","content":"Hello!"}}],"max_tokens":32}}'

Or with the OpenAI Python SDK:

  import ssl, httpx, openai
  tls = ssl.create_default_context(cafile="{ca}")
  tls.load_cert_chain("{cert}", "{key}")
  client = openai.OpenAI(base_url="https://localhost:{port}/v1", api_key="unused",
                         http_client=httpx.Client(verify=tls))
  reply = client.chat.completions.create(model="{DEV_MODEL}", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=32)
  print(reply.choices[0].message.content)

Press Ctrl-C to stop.
"#
    )
}
