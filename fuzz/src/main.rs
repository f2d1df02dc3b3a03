//! `airlock-fuzz <target>`: one fuzz target under AFL++, in persistent mode. Built (with the
//! AFL++ runtime and coverage instrumentation) by `fuzz/afl build`; run by `fuzz/afl run`.
//! Without `afl-fuzz` it reads one input from standard input, which reproduces a crash:
//! `airlock-fuzz gguf < crash-file`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = airlock_fuzz::target(&name) else {
        let names: Vec<_> = airlock_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: airlock-fuzz <target>\ntargets: {}", names.join(" "));
        std::process::exit(64);
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
}
