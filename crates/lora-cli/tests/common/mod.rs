//! What the `lora` binary's tests share: the tiny ViT they train from scratch.

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
