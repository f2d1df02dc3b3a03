//! No code: this crate exists for its `Cargo.toml` (feature unification, see there).
