use super::*;

/// A GGUF v3 file: `kv` pre-encoded key/values, one `[2, 32]` F32 tensor `t`.
fn file(kv: &[Vec<u8>], ty: u32, dims: &[u64]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for e in kv {
        b.extend(e);
    }
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    let n: u64 = dims.iter().product();
    for i in 0..n {
        b.extend((i as f32).to_le_bytes());
    }
    b
}

fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

#[test]
fn parses_metadata_of_every_kind_and_reverses_dims() {
    let mut arr = 8u32.to_le_bytes().to_vec(); // array of strings
    arr.extend(2u64.to_le_bytes());
    arr.extend(string("a"));
    arr.extend(string("b c"));
    let bytes = file(
        &[
            kv("u8", 0, &[7]),
            kv("i32", 5, &(-3i32).to_le_bytes()),
            kv("f32", 6, &1.5f32.to_le_bytes()),
            kv("bool", 7, &[1]),
            kv("s", 8, &string("llama")),
            kv("arr", 9, &arr),
            kv("u64", 10, &u64::MAX.to_le_bytes()),
            kv("f64", 12, &0.25f64.to_le_bytes()),
        ],
        0,
        &[32, 2],
    );
    let p = parse(&bytes).map_err(|e| e.to_string());
    assert!(p.is_ok(), "{p:?}", p = p.as_ref().err());
    let Ok(p) = p else { return };
    let m = &p.metadata;
    assert_eq!(m.get("u8").and_then(Value::as_u64), Some(7));
    assert_eq!(m.get("i32").and_then(Value::as_u64), None);
    assert_eq!(m.get("f32").and_then(Value::as_f64), Some(1.5));
    assert_eq!(m.get("bool").and_then(Value::as_bool), Some(true));
    assert_eq!(m.get("s").and_then(Value::as_str), Some("llama"));
    assert_eq!(
        m.get("arr").and_then(Value::as_array).map(<[Value]>::len),
        Some(2)
    );
    assert_eq!(m.get("u64").and_then(Value::as_u64), Some(u64::MAX));
    assert_eq!(m.get("f64").and_then(Value::as_f64), Some(0.25));
    let t = &p.tensors[0];
    assert_eq!(t.shape, vec![2, 32]);
    assert_eq!(t.end - t.start, 2 * 32 * 4);
    assert_eq!(t.start % 32, 0);
}

#[test]
fn rejects_malformed_values_precisely() {
    let cases: [(Vec<u8>, &str); 5] = [
        (kv("b", 7, &[2]), "bool byte 2"),
        (kv("x", 13, &[]), "unknown value type 13"),
        (
            kv("a", 9, &[9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]),
            "nested deeper",
        ),
        (
            kv("a", 9, &[4, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]),
            "cannot fit",
        ),
        (
            kv("general.alignment", 4, &24u32.to_le_bytes()),
            "power-of-two",
        ),
    ];
    for (entry, want) in cases {
        let err = parse(&file(&[entry], 0, &[32, 2]))
            .err()
            .unwrap_or_default();
        assert!(err.contains(want), "{want}: {err}");
    }
    let err = parse(&file(&[], 0, &[33, 2])).err();
    assert!(err.is_none(), "{err:?}");
    let err = parse(&file(&[], 8, &[33, 2])).err().unwrap_or_default();
    assert!(
        err.contains("not a multiple of the Q8_0 block size 32"),
        "{err}"
    );
    let err = parse(&file(&[], 0, &[0, 2])).err().unwrap_or_default();
    assert!(err.contains("dimension 0"), "{err}");
    let err = parse(&file(&[], 0, &[1, 1, 1, 1, 1]))
        .err()
        .unwrap_or_default();
    assert!(err.contains("5 dimensions"), "{err}");
}

/// An array entry of `n` elements of type `elem`, each encoded as `item`.
fn array(elem: u32, n: u64, item: &[u8]) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend(n.to_le_bytes());
    for _ in 0..n {
        b.extend(item);
    }
    b
}

#[test]
fn arrays_cannot_allocate_more_than_the_file_size() {
    // Every element is really in the file (so the count check passes), but each one-byte
    // element would become a 32-byte value: refused before the array is allocated.
    let cases = [
        ("u8", array(0, 100_000, &[7])),
        ("empty strings", array(8, 20_000, &0u64.to_le_bytes())),
        (
            "empty arrays",
            array(9, 20_000, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
    ];
    for (name, value) in cases {
        let bytes = file(&[kv("a", 9, &value)], 0, &[32, 2]);
        let err = parse(&bytes).err().unwrap_or_default();
        assert!(
            err.contains("more memory than the") && err.contains("metadata `a`"),
            "{name}: {err}"
        );
    }
    // A claimed count far beyond the file is refused by the count check, not allocated.
    let mut huge = 0u32.to_le_bytes().to_vec();
    huge.extend((1u64 << 40).to_le_bytes());
    let err = parse(&file(&[kv("a", 9, &huge)], 0, &[32, 2]))
        .err()
        .unwrap_or_default();
    assert!(err.contains("cannot fit"), "{err}");
    // The same array, small enough, parses.
    let ok = parse(&file(&[kv("a", 9, &array(0, 4, &[7]))], 0, &[32, 2]));
    assert!(ok.is_ok(), "{:?}", ok.err());
}

fn strings(items: &[&str]) -> Vec<u8> {
    let mut b = 8u32.to_le_bytes().to_vec();
    b.extend((items.len() as u64).to_le_bytes());
    for s in items {
        b.extend(string(s));
    }
    b
}

fn written(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    (dir, path)
}

#[test]
fn the_header_alone_is_read_and_checked_against_the_file_size() {
    let bytes = file(
        &[kv("general.architecture", 8, &string("llama"))],
        0,
        &[32, 2],
    );
    let (_dir, path) = written(&bytes);
    // A budget smaller than the file: the header fits, the tensor data is never read.
    let header = GgufFile::open_header(&path, bytes.len() - 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.tensors[0].shape, vec![2, 32]);
    assert_eq!(header.tensors[0].end, bytes.len());
    assert!(header.bytes(&header.tensors[0]).is_empty());
    assert_eq!(header.architecture().ok(), Some("llama"));

    // The data is cut short: the tensor table points past the end of the file.
    let (_dir, cut) = written(&bytes[..bytes.len() - 4]);
    let err = GgufFile::open_header(&cut, 1 << 20)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("beyond the end")),
        "{err:?}"
    );

    // A header larger than the budget is refused, saying so.
    let err = GgufFile::open_header(&path, 16)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("read up to 16 bytes")),
        "{err:?}"
    );
}

#[test]
fn smollm_splits_every_digit_before_the_gpt2_regex() {
    let tokens = ["1", "2", "3", "12", "a", "b", "ab", "Ġ"];
    let build_for = |pre: &str| {
        let bytes = file(
            &[
                kv("general.architecture", 8, &string("llama")),
                kv("tokenizer.ggml.model", 8, &string("gpt2")),
                kv("tokenizer.ggml.pre", 8, &string(pre)),
                kv("tokenizer.ggml.tokens", 9, &strings(&tokens)),
                kv("tokenizer.ggml.merges", 9, &strings(&["1 2", "a b"])),
            ],
            0,
            &[32, 2],
        );
        let (_dir, path) = written(&bytes);
        let gguf = GgufFile::open(&path, None).unwrap_or_else(|e| panic!("{e}"));
        tokenizer::build(&gguf).unwrap_or_else(|e| panic!("{e}"))
    };
    let ids = |pre: &str| -> Vec<u32> { build_for(pre).tokenize("ab 123", false, false) };
    // GPT-2's regex keeps " 123" together, so "1 2" merges; SmolLM's splits digits first.
    assert_eq!(ids("default"), vec![6, 7, 3, 2]);
    assert_eq!(ids("smollm"), vec![6, 7, 0, 1, 2]);
}
