use super::*;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20_001) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

/// `x · Wᵀ` in f64, the reference every format is held to.
fn reference(w: &[f32], x: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f64> {
    let mut y = vec![0f64; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = (0..inp)
                .map(|i| f64::from(w[o * inp + i]) * f64::from(x[r * inp + i]))
                .sum();
        }
    }
    y
}

/// `x` as the quantized kernels see it: each row's 32-element blocks rounded to 8 bits.
fn dequantized_activations(x: &[f32], rows: usize, inp: usize) -> Vec<f32> {
    let a = qdot::quantize(x, rows, inp / QK, qdot::Weights::Q8_0);
    a.qs.chunks_exact(QK)
        .zip(&a.ds)
        .flat_map(|(q, &d)| q.iter().map(move |&q| f32::from(q) * d))
        .collect()
}

/// `m · x` by the portable code only, whatever this CPU has.
fn portable(m: &PackedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let (out, inp) = (m.out, m.inp);
    let blocks = inp / QK;
    let quant = |v: &[u8], kind| {
        let a = qdot::quantize(x, rows, blocks, kind);
        by_panels(out, rows, qdot::PANEL, |first, dst| {
            qdot::run_portable(v, kind, &a, first, dst)
        })
    };
    match &m.data {
        Data::Wide(e, v) => {
            let a = wpanel::Acts { x, rows, inp };
            by_panels(out, rows, wpanel::PANEL, |first, dst| {
                wpanel::run_portable(v, *e, &a, first, dst)
            })
        }
        Data::Panels(k, v) => quant(v, *k),
        Data::KPanels(k, v) => {
            let a = kdot::quantize(x, rows, inp, quant::QK_K);
            by_panels(out, rows, qdot::PANEL, |first, dst| {
                kpanel::run_portable(v, *k, &a, first, dst)
            })
        }
        Data::Quant(t, v) => {
            let a = kdot::quantize(x, rows, inp, kdot::act_block(*t));
            by_columns(out, rows, COL_TILE, |first, dst| {
                kdot::run_portable(v, *t, &a, first, dst)
            })
        }
    }
}

#[test]
fn simd_kernels_match_the_portable_code_bit_for_bit() {
    // Widths with partial and empty last 16-lane steps; column counts off the 4-column
    // tile; row counts off every row tile, and past the 64-row block.
    for (out, inp) in [
        (13, 64),
        (6, 45),
        (9, 16),
        (5, 33),
        (70, 96),
        (3, 7),
        (161, 40),
    ] {
        let w = data(out * inp, 11);
        for rows in [1, 2, 3, 5, 8, 13, 67] {
            let x = data(rows * inp, 12);
            for format in [
                Format::F32,
                Format::Bf16,
                Format::F16,
                Format::Q8_0,
                Format::Q4_0,
            ] {
                let Ok(m) = PackedMatrix::pack(&w, out, inp, format) else {
                    assert!(!inp.is_multiple_of(QK));
                    continue;
                };
                let got = m.matmul_t(&x, rows).unwrap();
                let want = portable(&m, &x, rows);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{format:?} {out}x{inp}, {rows} rows"
                );
            }
        }
    }
}

/// The AVX2 `f32`/`bf16`/`f16` panel kernel, which `matmul_t` skips on a CPU with AVX-512,
/// against the portable code, bit for bit, with widths and column counts off every tile.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_wide_panels_match_the_portable_code_bit_for_bit() {
    if simd_level() < 1 || !f16c() {
        return;
    }
    for (out, inp) in [(13, 64), (6, 45), (70, 96), (3, 7), (129, 33)] {
        let w = data(out * inp, 21);
        for format in [Format::F32, Format::Bf16, Format::F16] {
            let m = PackedMatrix::pack(&w, out, inp, format).unwrap();
            let Data::Wide(e, v) = &m.data else {
                panic!("{format:?} is kept in panels");
            };
            for rows in [1, 2, 3, 5, 7, 67] {
                let x = data(rows * inp, 22);
                let a = wpanel::Acts { x: &x, rows, inp };
                let got = by_panels(out, rows, wpanel::PANEL, |first, dst| {
                    wpanel::x86::run_avx2(v, *e, &a, first, dst)
                });
                let want = by_panels(out, rows, wpanel::PANEL, |first, dst| {
                    wpanel::run_portable(v, *e, &a, first, dst)
                });
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{format:?} {out}x{inp}, {rows} rows"
                );
            }
        }
    }
}

/// The AVX2 `Q8_0`/`Q4_0` kernel, which `matmul_t` skips on a CPU with AVX-512 VNNI, against
/// the portable code, bit for bit; weights from random bytes (`Q8_0` quants of −128, which
/// no quantizer writes, included).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_panels_match_the_portable_code_bit_for_bit() {
    if simd_level() < 1 || !f16c() {
        return;
    }
    for (t, kind) in [
        (QType::Q8_0, qdot::Weights::Q8_0),
        (QType::Q4_0, qdot::Weights::Q4_0),
        (QType::Q5_0, qdot::Weights::Q5_0),
    ] {
        for (out, inp) in [(13, 64), (37, 96), (70, 32 * 19)] {
            let m = random_blocks(t, out, inp, out as u32);
            let Data::Panels(_, v) = &m.data else {
                panic!("{t} is kept in panels");
            };
            for rows in [1, 2, 3, 67] {
                let x = data(rows * inp, 7);
                let a = qdot::quantize(&x, rows, inp / QK, kind);
                let got = by_panels(out, rows, qdot::PANEL, |first, dst| {
                    x86::run_quant_v3(v, kind, &a, first, dst)
                });
                let want = by_panels(out, rows, qdot::PANEL, |first, dst| {
                    qdot::run_portable(v, kind, &a, first, dst)
                });
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{t} {out}x{inp}, {rows} rows"
                );
            }
        }
    }
}

/// The AVX2 `Q4_K`/`Q5_K`/`Q6_K` panel kernel, which `matmul_t` skips on a CPU with AVX-512 VNNI,
/// against the portable code, bit for bit, on random blocks (6-bit `Q6_K` quants of 0 and
/// 63, and scales of −128, included).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_k_panels_match_the_portable_code_bit_for_bit() {
    if simd_level() < 1 || !f16c() {
        return;
    }
    for t in [QType::Q4_K, QType::Q5_K, QType::Q6_K] {
        for (out, inp) in [(13, 256), (37, 512), (70, 256 * 9)] {
            let m = random_blocks(t, out, inp, out as u32);
            let Data::KPanels(kind, v) = &m.data else {
                panic!("{t} is kept in panels");
            };
            for rows in [1, 2, 3, 67] {
                let x = data(rows * inp, 7);
                let a = kdot::quantize(&x, rows, inp, quant::QK_K);
                let got = by_panels(out, rows, qdot::PANEL, |first, dst| {
                    kpanel::x86::run_avx2(v, *kind, &a, first, dst)
                });
                let want = by_panels(out, rows, qdot::PANEL, |first, dst| {
                    kpanel::run_portable(v, *kind, &a, first, dst)
                });
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{t} {out}x{inp}, {rows} rows"
                );
            }
        }
    }
}

#[test]
fn every_format_matches_its_own_dequantized_weights() {
    for (out, inp) in [(37, 64), (5, 96), (70, 32)] {
        let w = data(out * inp, 1);
        let x = data(3 * inp, 2);
        for format in [
            Format::F32,
            Format::Bf16,
            Format::F16,
            Format::Q8_0,
            Format::Q4_0,
        ] {
            let m = PackedMatrix::pack(&w, out, inp, format).unwrap();
            assert_eq!(m.format(), format);
            let wd = m.to_f32();
            // The quantized formats multiply by activations quantized to 8 bits per row.
            let xr = match format {
                Format::Q8_0 | Format::Q4_0 => dequantized_activations(&x, 3, inp),
                _ => x.clone(),
            };
            let want = reference(&wd, &xr, 3, out, inp);
            let got = m.matmul_t(&x, 3).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-4,
                    "{format:?} {out}x{inp}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn ragged_widths_work_for_16_and_32_bit_formats_only() {
    let (out, inp) = (9, 45);
    let w = data(out * inp, 3);
    let x = data(2 * inp, 4);
    for format in [Format::F32, Format::Bf16, Format::F16] {
        let m = PackedMatrix::pack(&w, out, inp, format).unwrap();
        let want = reference(&m.to_f32(), &x, 2, out, inp);
        let got = m.matmul_t(&x, 2).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{format:?}: {g} vs {w}");
        }
    }
    assert!(matches!(
        PackedMatrix::pack(&w, out, inp, Format::Q8_0),
        Err(PackError::Ragged { inp: 45, .. })
    ));
    assert!(PackedMatrix::pack(&w, out, inp, Format::Q4_0).is_err());
    assert!(PackedMatrix::pack(&w, out, inp + 1, Format::F32).is_err());
    assert_eq!(
        PackedMatrix::pack(&w, out, inp, Format::F32)
            .unwrap()
            .matmul_t(&x, 3),
        None
    );
}

#[test]
fn rows_are_bitwise_the_same_alone_or_in_any_batch() {
    let (out, inp) = (300, 128);
    let w = data(out * inp, 5);
    // Past 2 bands of 48 rows per thread: `by_tiles` then splits rows too.
    let rows = 37 + 2 * 48 * rayon::current_num_threads();
    let x = data(rows * inp, 6);
    for format in [
        Format::F32,
        Format::Bf16,
        Format::F16,
        Format::Q8_0,
        Format::Q4_0,
    ] {
        let m = PackedMatrix::pack(&w, out, inp, format).unwrap();
        let all = m.matmul_t(&x, rows).unwrap();
        for r in [0, 1, 5, 17, 36, rows / 2, rows - 1] {
            let alone = m.matmul_t(&x[r * inp..(r + 1) * inp], 1).unwrap();
            let all_bits: Vec<u32> = all[r * out..(r + 1) * out]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let alone_bits: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
            assert_eq!(all_bits, alone_bits, "{format:?} row {r}");
        }
        for n in [2, 3, 6] {
            let some = m.matmul_t(&x[..n * inp], n).unwrap();
            assert_eq!(
                some.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                all[..n * out]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "{format:?} first {n} rows"
            );
        }
    }
}

#[test]
fn lossless_keeps_16_bit_weights_16_bit() {
    let w: Vec<f32> = data(64, 7)
        .iter()
        .map(|&v| bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        PackedMatrix::lossless(&w, 2, 32).unwrap().format(),
        Format::Bf16
    );
    let w: Vec<f32> = data(64, 8)
        .iter()
        .map(|&v| f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        PackedMatrix::lossless(&w, 2, 32).unwrap().format(),
        Format::F16
    );
    let w = data(64, 9);
    let m = PackedMatrix::lossless(&w, 2, 32).unwrap();
    assert_eq!(m.format(), Format::F32);
    assert_eq!(m.to_f32(), w);
}

#[test]
fn f16_conversion_matches_half_for_every_value() {
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32();
        let got = f16_bits_to_f32(h);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{h:#06x}: {got} vs {want}"
        );
    }
}

#[test]
fn blocks_from_a_file_are_taken_as_is() {
    let w = data(4 * 64, 10);
    let q = quant::quantize_q4_0(&w).unwrap();
    let m = PackedMatrix::from_blocks(&q, 4, 64, Format::Q4_0).unwrap();
    assert_eq!(m.to_f32(), quant::dequantize_q4_0(&q).unwrap());
    assert!(PackedMatrix::from_blocks(&q, 4, 32, Format::Q4_0).is_err());
    // Repacked into panels of 16 columns and back: three panels, the last one padded.
    let w = data(37 * 96, 11);
    let q = quant::quantize_q8_0(&w).unwrap();
    let m = PackedMatrix::from_blocks(&q, 37, 96, Format::Q8_0).unwrap();
    assert_eq!(m.to_f32(), quant::dequantize_q8_0(&q).unwrap());
    // `Q5_0` panels and `Q4_K` / `Q5_K` / `Q6_K` ones (scales unpacked to bytes, 6-bit quants split
    // into nibbles and top bits) expand to the file's values, bit for bit.
    for t in [QType::Q5_0, QType::Q4_K, QType::Q5_K, QType::Q6_K] {
        let bytes = random_block_bytes(t, 37, 512, 3);
        let m = PackedMatrix::from_blocks(&bytes, 37, 512, Format::Quant(t)).unwrap();
        assert!(
            matches!(m.data, Data::KPanels(..) | Data::Panels(..)),
            "{t}"
        );
        let want = t.dequantize(&bytes).unwrap();
        assert_eq!(
            m.to_f32().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{t}"
        );
    }
}

/// Byte offsets of the `f16` scale fields in a block of `t`.
fn f16_fields(t: QType) -> &'static [usize] {
    match t {
        QType::Q4_1 | QType::Q5_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        _ => &[0],
    }
}

/// `[out, inp]` blocks of `t`: random bytes with finite scales, as a GGUF file holds them.
fn random_blocks(t: QType, out: usize, inp: usize, seed: u32) -> PackedMatrix {
    let bytes = random_block_bytes(t, out, inp, seed);
    PackedMatrix::from_blocks(&bytes, out, inp, Format::Quant(t)).unwrap()
}

/// The bytes of [`random_blocks`].
fn random_block_bytes(t: QType, out: usize, inp: usize, seed: u32) -> Vec<u8> {
    let n = out * inp / t.block_elems();
    let noise = data(n * t.block_bytes(), seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| (v.to_bits() >> 7) as u8).collect();
    for (b, block) in bytes.chunks_exact_mut(t.block_bytes()).enumerate() {
        for &at in f16_fields(t) {
            let d = f16::from_f32(0.001 + (b % 7) as f32 * 0.003).to_bits();
            block[at..at + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    bytes
}

#[test]
fn every_block_type_matches_the_portable_code_and_is_batch_invariant() {
    for t in QType::ALL {
        let k = t.block_elems();
        // 19 blocks: the SIMD kernels' 8-block steps and their tails.
        for (out, inp) in [(13, 2 * k), (6, k), (9, 3 * k), (5, 19 * k)] {
            let m = random_blocks(t, out, inp, out as u32 + t.ggml_id());
            let x = data(67 * inp, 12);
            let all = m.matmul_t(&x, 67).unwrap();
            for rows in [1, 2, 3, 5, 8, 67] {
                let got = m.matmul_t(&x[..rows * inp], rows).unwrap();
                let want = portable(&m, &x[..rows * inp], rows);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{t} {out}x{inp}, {rows} rows: SIMD vs portable"
                );
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    all[..rows * out]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{t} {out}x{inp}: first {rows} rows alone vs in a batch of 67"
                );
            }
            assert!(all.iter().all(|v| v.is_finite()), "{t}");
        }
    }
}

#[test]
fn only_q8_0_and_q4_0_are_produced_at_load() {
    let w = data(4 * 256, 3);
    assert!(matches!(
        PackedMatrix::pack(&w, 4, 256, Format::Quant(QType::Q4_K)),
        Err(PackError::NoQuantizer { format: "q4_k" })
    ));
}

/// The `VmFlags` of the mapping in `/proc/self/smaps` that holds address `at`.
#[cfg(target_os = "linux")]
fn vm_flags(at: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((lo, hi)) = range
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&at);
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return Some(flags.trim().to_owned());
        }
    }
    None
}

#[test]
#[cfg(target_os = "linux")]
fn weights_and_their_copies_ask_for_huge_pages() {
    // A kernel built without transparent huge pages refuses the advice, and one that does not
    // list `VmFlags` cannot show it: nothing to check there.
    let shown = std::fs::read_to_string("/proc/self/smaps").is_ok_and(|s| s.contains("VmFlags:"));
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() || !shown {
        eprintln!("no transparent huge pages or no VmFlags in /proc/self/smaps: not checked");
        return;
    }
    // 16 MiB as f32, 4.25 MiB as Q8_0, 2.25 MiB of Q4_K blocks.
    let (out, inp) = (4096, 1024);
    let w = data(out * inp, 4);
    let f32s = PackedMatrix::pack(&w, out, inp, Format::F32).unwrap();
    let q8 = PackedMatrix::pack(&w, out, inp, Format::Quant(QType::Q8_0)).unwrap();
    let blocks = random_blocks(QType::Q4_K, 4096, 1024, 5);
    let small = PackedMatrix::pack(&w[..64 * 256], 64, 256, Format::F32).unwrap();
    let middle = |m: &PackedMatrix| match &m.data {
        Data::Wide(_, v) | Data::Quant(_, v) | Data::Panels(_, v) | Data::KPanels(_, v) => {
            v.as_ptr() as usize + v.len() / 2
        }
    };
    for (name, m) in [
        ("f32", &f32s),
        ("f32 copy", &f32s.clone()),
        ("q8_0", &q8),
        ("q4_k from blocks", &blocks),
    ] {
        let flags = vm_flags(middle(m)).expect("the buffer's mapping in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "{name}: {} bytes, VmFlags {flags}",
            m.bytes()
        );
    }
    // Under one huge page: no advice (it could not be used).
    let flags = vm_flags(middle(&small)).expect("mapping");
    assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
}

/// The activation quantizers' SIMD path gives the portable code's bytes: quants, scales and
/// sums, over ordinary values, ties, zeros (signed), subnormals, blocks whose scale
/// underflows or whose inverse overflows, ±∞, NaN and values near `f32::MAX`.
#[test]
fn activation_quantization_is_the_portable_codes_bit_for_bit() {
    let mut x = data(256 * 6, 21);
    let odd: [&[f32]; 8] = [
        &[0.0, -0.0],
        &[2.5, -2.5, 3.5, 127.0, -127.0, 0.5, 1.5],
        &[f32::NAN, 1.0, -3.0],
        &[f32::INFINITY, 2.0],
        &[f32::NEG_INFINITY, -1.0],
        &[1e-40, -3e-41, 1e-45],
        &[1e-38, 2e-38],
        &[f32::MAX, -f32::MAX, 1e38],
    ];
    // Block b of 32 (qdot) holds odd[b % 8], the rest of it ordinary or zero.
    for (b, block) in x.chunks_exact_mut(32).enumerate() {
        let values = odd[b % odd.len()];
        if b % 3 == 0 {
            block.fill(0.0);
        }
        for (i, &v) in values.iter().enumerate() {
            block[(i * 5 + b) % 32] = v;
        }
    }
    // A NaN in the lane (and a later step) of its block's largest value, in both halves.
    let mut tail = vec![0.25f32; 256];
    (tail[3], tail[19]) = (-5.0, f32::NAN);
    (tail[32 + 20], tail[32 + 4]) = (7.0, f32::NAN);
    x.extend(tail);
    let n = x.len();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for offset in [0, 8, 16] {
        let (mut q, mut d, mut c) = (vec![0i8; n], vec![0f32; n / 32], vec![0i32; n / 32]);
        let (mut pq, mut pd, mut pc) = (q.clone(), d.clone(), c.clone());
        qdot::quantize_row(&x, &mut q, &mut d, &mut c, offset);
        qdot::quantize_row_portable(&x, &mut pq, &mut pd, &mut pc, offset);
        assert_eq!(q, pq, "qdot quants");
        assert_eq!(bits(&d), bits(&pd), "qdot scales");
        assert_eq!(c, pc, "qdot corrections");
    }
    for block in [32, 256] {
        let (mut q, mut d, mut s) = (vec![0i8; n], vec![0f32; n / block], vec![0i32; n / 16]);
        let (mut pq, mut pd, mut ps) = (q.clone(), d.clone(), s.clone());
        kdot::quantize_row(&x, &mut q, &mut d, &mut s, block);
        kdot::quantize_row_portable(&x, &mut pq, &mut pd, &mut ps, block);
        assert_eq!(q, pq, "kdot quants, block {block}");
        assert_eq!(bits(&d), bits(&pd), "kdot scales, block {block}");
        assert_eq!(s, ps, "kdot sums, block {block}");
    }
}
