//! `airlock-fuzz <target>`: one fuzz target under AFL++, in persistent mode. Built (with the
//! AFL++ runtime and coverage instrumentation) by `fuzz/afl build`; run by `fuzz/afl run`.
//! Without `afl-fuzz` it reads one input from standard input, which reproduces a crash:
//! `airlock-fuzz gguf < crash-file`. `airlock-fuzz --write-seeds DIR` writes the seed
//! corpora (as `cargo test -p airlock-fuzz --test corpus -- --ignored write_seeds` does).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--write-seeds" {
        let dir = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "fuzz/corpus".into());
        match airlock_fuzz::seeds::write_all(std::path::Path::new(&dir)) {
            Ok(n) => println!("wrote {n} seeds under {dir}"),
            Err(e) => {
                eprintln!("cannot write seeds under {dir}: {e}");
                std::process::exit(74);
            }
        }
        return;
    }
    let Some(target) = airlock_fuzz::target(&name) else {
        let names: Vec<_> = airlock_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: airlock-fuzz <target>\ntargets: {}", names.join(" "));
        std::process::exit(64);
    };
    let run = target.run;
    if target.contained_panics {
        afl::fuzz_nohook!(|data: &[u8]| run(data));
    } else {
        afl::fuzz!(|data: &[u8]| run(data));
    }
}
