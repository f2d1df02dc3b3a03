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
    #[error("demo API key: {0}")]
    Keys(#[from] crate::keys::KeyStoreError),
}

/// The tenant `dev` issues a client certificate for.
pub const DEV_TENANT: &str = "demo";
/// Where `dev` keeps the demo tenant's API key (0600): the key store holds only its hash, so
/// this file is what lets every run print a key that works.
const DEV_KEY_FILE: &str = "demo-api-key";
/// The key store, relative to the config file.
const DEV_KEY_DB: &str = "keys.db";

/// The model name `dev` serves.
pub const DEV_MODEL: &str = airlock_engine::default_model::NAME;

/// The name `dev` serves embeddings under: the same embedded files, mean-pooled.
pub const DEV_EMBED_MODEL: &str = "airlock-tiny-embed";

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
    demo_key(&dir)?;
    Ok(config)
}

/// Makes sure the demo tenant has a usable API key on file, creating one when the file is
/// missing or its key is no longer in the store (or revoked).
fn demo_key(dir: &Path) -> Result<String, DevError> {
    let file = dir.join(DEV_KEY_FILE);
    let store = crate::keys::KeyStore::open(&dir.join(DEV_KEY_DB))?;
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(key) = airlock_policy::ApiKey::parse(text.trim())
        && store
            .get(key.id())?
            .is_some_and(|record| record.usable(std::time::SystemTime::now()))
    {
        return Ok(key.expose().to_owned());
    }
    let (key, _) = store.create(DEV_TENANT, None, None)?;
    write_private(&file, key.expose())?;
    Ok(key.expose().to_owned())
}

fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{text}").map_err(io)
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
         # The same tiny model again, serving /v1/embeddings (mean-pooled final hidden\n\
         # states; a toy space, for trying the API, not for retrieval).\n\
         [[models]]\n\
         name = \"{DEV_EMBED_MODEL}\"\n\
         path = {model}\n\
         device = \"cpu\"\n\
         pooling = \"mean\"\n\
         max_active = 2\n\n\
         # Tenant `demo`: its client certificate alone identifies it (curl), and SDKs that\n\
         # must send an API key use the one in {DEV_KEY_FILE} (`airlockd keys list --config`).\n\
         [auth]\n\
         key_db = \"{DEV_KEY_DB}\"\n\n\
         [[tenants]]\n\
         name = \"{DEV_TENANT}\"\n\
         models = [\"*\"]\n\
         cert_cn = [\"{DEV_TENANT}\"]\n\n\
         # Every request is recorded; verify with\n\
         # airlockd audit verify --db {audit_db} --pubkey {audit_pub}\n\
         [audit]\n\
         db = {audit_db}\n\
         signing_key = {audit_key}\n\
         digest_key = {digest_key}\n\n\
         # Metrics (/metrics) and `airlockd status --config THIS_FILE`, for this host only.\n\
         [admin]\n\
         address = \"{admin}\"\n",
        // `--port 0` (tests, parallel runs) picks a free admin port too.
        admin = if port == 0 {
            "127.0.0.1:0"
        } else {
            crate::config::admin::DEFAULT_ADDRESS
        },
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
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let key_file = dir.join(DEV_KEY_FILE);
    // `prepare` wrote it moments ago; a placeholder keeps the banner readable if not.
    let api_key = std::fs::read_to_string(&key_file)
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "<see airlockd keys create>".into());
    let key_file = key_file.display();
    let pki = dir.join("certs");
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

Or with the OpenAI Python SDK, which always sends an API key: this is tenant "{DEV_TENANT}"'s
(kept in {key_file}; the store holds only its argon2id hash):

  import ssl, httpx, openai
  tls = ssl.create_default_context(cafile="{ca}")
  tls.load_cert_chain("{cert}", "{key}")
  client = openai.OpenAI(base_url="https://localhost:{port}/v1", api_key="{api_key}",
                         http_client=httpx.Client(verify=tls))
  reply = client.chat.completions.create(model="{DEV_MODEL}", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=32)
  print(reply.choices[0].message.content)

Press Ctrl-C to stop.
"#
    )
}
