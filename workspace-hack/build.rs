//! Empty: cargo resolves a package's build-dependencies (here, host-side feature
//! unification) only when it has a build script.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
