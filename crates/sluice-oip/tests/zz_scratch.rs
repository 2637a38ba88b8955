#[test]
#[ignore]
fn scratch_f32_exhaustive() {
    let mut buf = ryu::Buffer::new();
    let mut bad = 0u64;
    let mut n = 0u64;
    let mut bits: u32 = 0;
    loop {
        let f = f32::from_bits(bits);
        if f.is_finite() {
            let s = buf.format_finite(f);
            let d: f64 = serde_json::from_str(s).unwrap();
            if (d as f32).to_bits() != bits {
                bad += 1;
                if bad < 5 {
                    eprintln!("{s} {bits:#x}");
                }
            }
            n += 1;
        }
        match bits.checked_add(7) {
            Some(b) => bits = b,
            None => break,
        }
    }
    eprintln!("checked {n}, bad {bad}");
    assert_eq!(bad, 0);
}
