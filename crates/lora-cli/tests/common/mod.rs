//! What the `lora` binary's tests share: the tiny ViT they train from scratch,
//! and grey PNG images written by hand. Each test binary uses a part of it.

#![allow(dead_code)]

use std::path::Path;

/// `[model]` and `[lora]` of a 1-layer ViT (hidden 16, 2 heads) on 28 x 28
/// digits, trained in full: a run of a few steps takes about a second.
pub const TINY_VIT: &str = r#"[model]
type = "vit-classifier"
mode = "full"
image-size = 28
patch-size = 7
channels = 1
hidden-size = 16
layers = 1
heads = 2
mlp-size = 32

[lora]
r = 1
alpha = 1
target-modules = []
"#;

/// A 28 x 28 grey PNG whose pixel at column `x`, row `y` is `pixel(x, y)`,
/// written by hand (stored zlib blocks, no compression crate).
pub fn grey_png(path: &Path, pixel: impl Fn(u32, u32) -> u8) {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc(&body).to_be_bytes());
    }
    let (w, h) = (28u32, 28u32);
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| pixel(x, y)));
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + byte as u32) % 65521;
        b = (b + a) % 65521;
    }
    let mut zlib = vec![0x78, 0x01, 1];
    zlib.extend((raw.len() as u16).to_le_bytes());
    zlib.extend((!(raw.len() as u16)).to_le_bytes());
    zlib.extend(&raw);
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend(w.to_be_bytes());
    header.extend(h.to_be_bytes());
    header.extend([8, 0, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}
