#!/usr/bin/env python3
"""Do the README's two commands share one build? Lists the third-party units that
`cargo test --workspace --locked` and `cargo run --bin airlockd` would compile differently.

    python3 workspace-hack/check.py          # exit 0: none (only our own crates may differ)

Compiles nothing: it compares cargo's unit graphs (`--unit-graph`, an unstable flag, enabled
here with RUSTC_BOOTSTRAP=1 for these two read-only cargo calls only). A unit is a package
built for one target with one feature set and one profile; two commands share an artifact
exactly when they share the unit (the profile's name, `dev` or `test`, is not part of it:
cargo hashes the profile's settings). For each third-party unit of the second command that the
first lacks, it prints the features to add to workspace-hack/Cargo.toml.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def graph(args):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    out = subprocess.run(
        ["cargo", *args, "-Z", "unstable-options", "--unit-graph"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"cargo {' '.join(args)} --unit-graph failed:\n{out.stderr}")
    units = {}
    for u in json.loads(out.stdout)["units"]:
        profile = {k: v for k, v in u["profile"].items() if k != "name"}
        key = (u["pkg_id"], u["target"]["name"], u["mode"], u["platform"] or "host")
        units.setdefault(key, []).append((tuple(sorted(u["features"])), json.dumps(profile, sort_keys=True)))
    return units


def main():
    test = graph(["test", "--workspace", "--locked", "--no-run"])
    run = graph(["build", "--locked", "--bin", "airlockd"])
    ours, theirs = [], []
    for key, variants in sorted(run.items()):
        have = test.get(key, [])
        for features, profile in variants:
            if (features, profile) in have:
                continue
            pkg = key[0]
            name = pkg.split("#")[-1]
            if pkg.startswith("path+file://"):
                ours.append(f"{name} {key[1]}: {', '.join(features) or 'no features'}")
                continue
            if not have:
                theirs.append(f"{name} ({key[1]}, {key[2]}): not in the test build at all")
                continue
            extra = sorted(set(have[0][0]) - set(features))
            same_profile = any(p == profile for _, p in have)
            why = f"test build adds features {extra}" if extra else "profile differs" if not same_profile else "features differ"
            theirs.append(f"{name} ({key[1]}, {key[2]}, {key[3]}): {why}")
    for line in ours:
        print(f"own crate, rebuilt (features differ, acceptable): {line}")
    for line in theirs:
        print(f"THIRD-PARTY, rebuilt: {line}")
    total = sum(len(v) for v in run.values())
    print(f"{total} units in `cargo run --bin airlockd`; {len(ours)} own and {len(theirs)} third-party not shared with `cargo test --workspace`")
    sys.exit(1 if theirs else 0)


if __name__ == "__main__":
    main()
