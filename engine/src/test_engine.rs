//! A deterministic, test-only engine (owned by the gateway work; see the file's final docs).
